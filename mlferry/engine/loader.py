"""Load an Argo Workflow, WorkflowTemplate or CronWorkflow and check that it can run locally.

Every field of the document is in one of three groups:

- implemented: the local executor does what Argo does with it (the `_IMPLEMENTED` table);
- no local effect: the field only matters to a cluster (scheduling, pod placement, garbage
  collection, metadata), so running on this machine without it is running it faithfully
  (the `_NO_LOCAL_EFFECT` table);
- everything else, which is an error at load time naming the field's path: an Argo feature the
  executor does not implement must never be silently skipped.

Besides fields, the loader checks references as Argo's validator does (workflow/validate): the
entrypoint, each task's template, `depends`/`dependencies` targets, arguments against the called
template's inputs, every `{{variable}}` against what is in scope where it is used, and cycles.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mlferry.engine.expressions import (
    ExpressionError,
    check_when,
    expression_variables,
    parse_depends,
    tags,
)

API_VERSION = "argoproj.io/v1alpha1"
WORKFLOW_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
LEAF_TYPES = ("script", "container")
TEMPLATE_TYPES = ("dag", "steps", "script", "container")

_CONTAINER = {"command", "args", "env", "envFrom"}

# What the executor implements, per kind of object.
_IMPLEMENTED: dict[str, set[str]] = {
    "document": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"entrypoint", "templates", "arguments", "parallelism", "activeDeadlineSeconds",
             "synchronization", "onExit", "workflowTemplateRef"},
    "cron": {"workflowSpec"},
    "template": {"name", "inputs", "outputs", "dag", "steps", "script", "container", "retryStrategy",
                 "activeDeadlineSeconds", "parallelism", "synchronization"},
    "dag": {"tasks", "failFast"},
    "task": {"name", "template", "arguments", "depends", "dependencies", "when", "withItems", "withParam",
             "continueOn"},
    "step": {"name", "template", "arguments", "when", "withItems", "withParam", "continueOn"},
    "arguments": {"parameters"},
    "inputs": {"parameters"},
    "outputs": {"parameters"},
    "parameter": {"name", "value", "default", "enum", "description", "valueFrom"},
    "container": _CONTAINER,
    "script": _CONTAINER | {"source"},
    "env": {"name", "value", "valueFrom"},
    "envSource": {"configMapKeyRef", "secretKeyRef"},
    "keyRef": {"name", "key", "optional"},
    "envFrom": {"configMapRef", "secretRef", "prefix"},
    "envFromRef": {"name", "optional"},
    "retryStrategy": {"limit", "retryPolicy", "backoff", "expression"},
    "backoff": {"duration", "factor", "maxDuration", "cap"},
    "synchronization": {"mutexes", "semaphores", "mutex", "semaphore"},  # v3.6+ lists; v3 singular
    "mutex": {"name", "namespace"},
    "semaphore": {"configMapKeyRef", "namespace"},
    "continueOn": {"failed", "error"},
    "templateRef": {"name", "clusterScope"},
}

# Fields that only a cluster acts on: accepted, and without local behaviour by design.
_NO_LOCAL_EFFECT: dict[str, set[str]] = {
    "document": {"status"},  # what `argo get -o yaml` adds; the executor writes its own record
    "spec": {
        "podGC", "ttlStrategy", "serviceAccountName", "automountServiceAccountToken", "securityContext",
        "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "podMetadata", "podPriorityClassName",
        "priority", "schedulerName", "workflowMetadata", "archiveLogs", "artifactGC", "artifactRepositoryRef",
        "metrics", "podDisruptionBudget", "executor", "dnsPolicy", "volumeClaimGC", "podResources",
    },
    # A CronWorkflow runs its workflowSpec once locally; when and how often is the scheduler's business.
    "cron": {"schedule", "schedules", "timezone", "concurrencyPolicy", "startingDeadlineSeconds",
             "successfulJobsHistoryLimit", "failedJobsHistoryLimit", "suspend", "workflowMetadata", "stopStrategy"},
    "template": {"metadata", "nodeSelector", "affinity", "tolerations", "schedulerName", "priorityClassName",
                 "serviceAccountName", "automountServiceAccountToken", "securityContext", "metrics",
                 "archiveLocation", "executor", "podResources", "pendingTimeout"},
    # Local processes run in this machine's Python environment, not in the image.
    "container": {"name", "image", "imagePullPolicy", "resources", "securityContext", "terminationMessagePath",
                  "terminationMessagePolicy"},
    "script": {"name", "image", "imagePullPolicy", "resources", "securityContext", "terminationMessagePath",
               "terminationMessagePolicy"},
    "retryStrategy": {"affinity"},  # "retry on another node": there is one node
    "mutex": {"database"},  # database-backed or not, a mutex excludes; the local one is a file lock
    "semaphore": {"database"},
}


class PlanError(ValueError):
    """The document cannot run locally; `problems` lists each reason with its field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: cannot run locally:\n{lines}")


@dataclass(frozen=True)
class WorkflowParameter:
    """A parameter the workflow declares in spec.arguments."""

    name: str
    value: str | None = None
    enum: tuple[str, ...] = ()
    description: str = ""
    config_map_key: tuple[str, str] | None = None  # valueFrom.configMapKeyRef (name, key)


@dataclass(frozen=True)
class Plan:
    """A checked workflow, ready for `executor.run`. Treat `spec` as read-only."""

    kind: str
    name: str
    generate_name: str
    namespace: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    source: str
    templates: Mapping[str, Mapping[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", {t["name"]: t for t in self.spec["templates"]})

    @property
    def entrypoint(self) -> str:
        return self.spec["entrypoint"]

    @property
    def parameters(self) -> tuple[WorkflowParameter, ...]:
        return tuple(_workflow_parameter(p) for p in self.spec.get("arguments", {}).get("parameters", []))


def load(source: Mapping[str, Any] | str | Path, *,
         workflow_templates: Iterable[Mapping[str, Any] | str | Path | Plan] = ()) -> Plan:
    """Read and check a document; raise PlanError listing every problem found.

    A Workflow with `spec.workflowTemplateRef` (or a CronWorkflow whose workflowSpec has one) is
    resolved against `workflow_templates`, as `argo submit --from workflowtemplate/NAME` would.
    """
    doc, where = _read(source)
    problems: list[str] = []
    _fields(doc, "", "document", problems)
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}")
    if kind not in WORKFLOW_KINDS:
        raise PlanError(where, problems + [f"kind: expected one of {', '.join(WORKFLOW_KINDS)}, got {kind!r}"])
    spec, spec_path = _workflow_spec(doc, problems)
    if problems:
        raise PlanError(where, problems)
    spec = _resolve_template_ref(spec, spec_path, _by_name(workflow_templates), problems)
    if problems:
        raise PlanError(where, problems)
    _Checker(spec, spec_path, _labels(doc), problems).check()
    if problems:
        raise PlanError(where, problems)
    metadata = doc.get("metadata") or {}
    name = metadata.get("name", "")
    return Plan(
        kind=kind,
        name=name,
        generate_name=metadata.get("generateName") or (f"{name}-" if name else "workflow-"),
        namespace=metadata.get("namespace"),
        labels=dict(metadata.get("labels") or {}),
        annotations=dict(metadata.get("annotations") or {}),
        spec=spec,
        source=where,
    )


# -- documents --------------------------------------------------------------------------------

def _read(source: Mapping[str, Any] | str | Path) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), f"{source.get('kind', 'document')}/{_doc_name(source)}"
    path = Path(source)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise PlanError(str(path), [f"expected exactly one YAML document (a mapping), found {len(docs)}"])
    return docs[0], str(path)


def _doc_name(doc: Mapping[str, Any]) -> str:
    metadata = doc.get("metadata") or {}
    return metadata.get("name") or metadata.get("generateName") or "?"


def _labels(doc: Mapping[str, Any]) -> dict[str, set[str]]:
    metadata = doc.get("metadata") or {}
    return {"labels": set(metadata.get("labels") or {}), "annotations": set(metadata.get("annotations") or {})}


def _workflow_spec(doc: dict, problems: list[str]) -> tuple[dict, str]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec: required")
        return {}, "spec"
    if doc["kind"] != "CronWorkflow":
        return spec, "spec"
    _fields(spec, "spec", "cron", problems)
    if not isinstance(spec.get("workflowSpec"), dict):
        problems.append("spec.workflowSpec: required")
        return {}, "spec.workflowSpec"
    return spec["workflowSpec"], "spec.workflowSpec"


def _by_name(templates: Iterable[Mapping[str, Any] | str | Path | Plan]) -> dict[str, dict]:
    out = {}
    for item in templates:
        if isinstance(item, Plan):
            doc = {"kind": item.kind, "metadata": {"name": item.name}, "spec": copy.deepcopy(dict(item.spec))}
        else:
            doc, _where = _read(item)
        out[_doc_name(doc)] = doc
    return out


def _resolve_template_ref(spec: dict, path: str, known: dict[str, dict], problems: list[str]) -> dict:
    """Merge a Workflow onto the WorkflowTemplate it references (its arguments win, by name)."""
    ref = spec.get("workflowTemplateRef")
    if ref is None:
        return spec
    _fields(ref, f"{path}.workflowTemplateRef", "templateRef", problems)
    target = known.get(ref.get("name", ""))
    if target is None or target.get("kind") not in ("WorkflowTemplate", "ClusterWorkflowTemplate"):
        names = ", ".join(sorted(known)) or "none were given"
        problems.append(f"{path}.workflowTemplateRef.name: no WorkflowTemplate {ref.get('name')!r} (known: {names})")
        return spec
    merged = copy.deepcopy(target.get("spec") or {})
    for key, value in spec.items():
        if key == "arguments":
            merged["arguments"] = _merge_arguments(merged.get("arguments") or {}, value or {})
        elif key != "workflowTemplateRef":
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_arguments(base: dict, override: dict) -> dict:
    params = {p["name"]: dict(p) for p in base.get("parameters", []) if isinstance(p, dict) and "name" in p}
    for p in override.get("parameters", []):
        params[p["name"]] = {**params.get(p["name"], {}), **p}
    return {**base, **{k: v for k, v in override.items() if k != "parameters"}, "parameters": list(params.values())}


def _workflow_parameter(p: Mapping[str, Any]) -> WorkflowParameter:
    value = p.get("value", p.get("default"))
    ref = (p.get("valueFrom") or {}).get("configMapKeyRef")
    return WorkflowParameter(
        name=p["name"],
        value=None if value is None else _string(value),
        enum=tuple(_string(v) for v in p.get("enum") or ()),
        description=p.get("description", ""),
        config_map_key=(ref["name"], ref["key"]) if ref else None,
    )


def _string(value: Any) -> str:
    """A YAML scalar as the string Argo would see (AnyString)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- fields -----------------------------------------------------------------------------------

def _fields(obj: Any, path: str, kind: str, problems: list[str]) -> bool:
    """Report fields of `obj` that are neither implemented nor inert; False if obj is no mapping."""
    if not isinstance(obj, dict):
        problems.append(f"{path or '<document>'}: expected a mapping, got {type(obj).__name__}")
        return False
    known = _IMPLEMENTED[kind] | _NO_LOCAL_EFFECT.get(kind, set())
    for key in obj:
        if key not in known:
            problems.append(_unknown_field(_join(path, key), key, known))
    return True


def _unknown_field(path: str, key: str, known: set[str]) -> str:
    guess = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{path}: not supported by the local executor: an unknown field, or an Argo feature it does not implement{hint}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _items(obj: Any, path: str, problems: list[str]) -> list[tuple[str, Any]]:
    """(path, item) for each element of a list, the path naming the item when it has a name."""
    if obj is None:
        return []
    if not isinstance(obj, list):
        problems.append(f"{path}: expected a list")
        return []
    return [(f"{path}[{x['name'] if isinstance(x, dict) and 'name' in x else i}]", x) for i, x in enumerate(obj)]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: Any) -> float:
    """Seconds in an Argo duration: a number of seconds, or a Go duration such as '1m30s'."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (e.g. '30s', '2m', '1h30m')")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _int_or_template(value: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and (
            value.strip().isdigit() or tags(value)))):
        problems.append(f"{path}: expected an integer, got {value!r}")


# -- the checker ------------------------------------------------------------------------------

@dataclass
class _Vars:
    """The variables in scope at one place in a template."""

    names: frozenset[str]
    item: bool = False

    def has(self, name: str) -> bool:
        return name in self.names or (self.item and (name == "item" or name.startswith("item.")))

    def plus(self, names: Iterable[str] = (), item: bool = False) -> "_Vars":
        return _Vars(self.names | frozenset(names), self.item or item)


class _Checker:
    def __init__(self, spec: dict, path: str, metadata_keys: dict[str, set[str]], problems: list[str]):
        self.spec, self.path, self.problems = spec, path, problems
        self.templates: dict[str, dict] = {}
        self.template_paths: dict[str, str] = {}
        self.globals = self._global_vars(metadata_keys)

    def check(self) -> None:
        if not _fields(self.spec, self.path, "spec", self.problems):
            return
        self._index_templates()
        for name in ("entrypoint", "onExit"):
            target = self.spec.get(name)
            if name == "entrypoint" and not target:
                self.problems.append(f"{self.path}.entrypoint: required")
            elif target is not None and target not in self.templates:
                self.problems.append(f"{self.path}.{name}: no template named {target!r}")
        self._workflow_arguments()
        if "parallelism" in self.spec:
            _int_or_template(self.spec["parallelism"], f"{self.path}.parallelism", self.problems)
        if "activeDeadlineSeconds" in self.spec:
            _int_or_template(self.spec["activeDeadlineSeconds"], f"{self.path}.activeDeadlineSeconds", self.problems)
        self._synchronization(self.spec.get("synchronization"), f"{self.path}.synchronization", _Vars(self.globals))
        for name, template in self.templates.items():
            self._template(template, self.template_paths[name])

    # workflow level
    def _index_templates(self) -> None:
        for path, template in _items(self.spec.get("templates"), f"{self.path}.templates", self.problems):
            if not isinstance(template, dict) or not template.get("name"):
                self.problems.append(f"{path}: a template needs a name")
            elif template["name"] in self.templates:
                self.problems.append(f"{path}: duplicate template name {template['name']!r}")
            else:
                self.templates[template["name"]] = template
                self.template_paths[template["name"]] = path
        if not self.templates:
            self.problems.append(f"{self.path}.templates: required")

    def _global_vars(self, metadata_keys: dict[str, set[str]]) -> frozenset[str]:
        params = [p.get("name") for p in (self.spec.get("arguments") or {}).get("parameters", []) if isinstance(p, dict)]
        names = {"workflow.name", "workflow.namespace", "workflow.uid", "workflow.creationTimestamp",
                 "workflow.status", "workflow.failures", "workflow.duration", "workflow.parameters.json",
                 "workflow.mainEntrypoint"}
        names |= {f"workflow.parameters.{p}" for p in params if p}
        names |= {f"workflow.{kind}.{k}" for kind, keys in metadata_keys.items() for k in keys}
        return frozenset(names)

    def _workflow_arguments(self) -> None:
        args = self.spec.get("arguments")
        if args is None:
            return
        path = f"{self.path}.arguments"
        if _fields(args, path, "arguments", self.problems):
            self._parameters(args.get("parameters"), f"{path}.parameters", value_from={"configMapKeyRef", "default"},
                             vars=_Vars(frozenset()))

    def _parameters(self, params: Any, path: str, *, value_from: set[str], vars: _Vars) -> list[str]:
        names = []
        for p_path, p in _items(params, path, self.problems):
            if not _fields(p, p_path, "parameter", self.problems):
                continue
            if not p.get("name"):
                self.problems.append(f"{p_path}.name: required")
            elif p["name"] in names:
                self.problems.append(f"{p_path}: duplicate parameter {p['name']!r}")
            names.append(p.get("name", ""))
            enum = [_string(v) for v in p.get("enum") or []]
            for key in ("value", "default"):
                if enum and key in p and tags(_string(p[key])) == [] and _string(p[key]) not in enum:
                    self.problems.append(f"{p_path}.{key}: {p[key]!r} is not one of the enum {enum}")
            self._value_from(p.get("valueFrom"), f"{p_path}.valueFrom", value_from, None)
            self._scan({k: v for k, v in p.items() if k not in ("name", "valueFrom")}, p_path, vars)
        return names

    def _value_from(self, vf: Any, path: str, allowed: set[str], outputs_of: dict | None) -> None:
        if vf is None:
            return
        if not isinstance(vf, dict):
            self.problems.append(f"{path}: expected a mapping")
            return
        for key in vf:
            if key not in allowed:
                self.problems.append(f"{path}.{key}: not supported by the local executor here "
                                     f"(supported: {', '.join(sorted(allowed))})")
        ref = vf.get("configMapKeyRef")
        if "configMapKeyRef" in allowed and ref is not None:
            if _fields(ref, f"{path}.configMapKeyRef", "keyRef", self.problems) and not (ref.get("name") and ref.get("key")):
                self.problems.append(f"{path}.configMapKeyRef: needs a name and a key")
        if outputs_of is not None:
            self._output_source(vf, path, outputs_of)

    def _output_source(self, vf: dict, path: str, outputs_of: dict) -> None:
        kind = outputs_of["kind"]
        if kind in LEAF_TYPES:
            if "path" not in vf:
                self.problems.append(f"{path}.path: required for a {kind} template's output parameter")
            elif not str(vf["path"]).startswith(outputs_of["outputs_dir"] + "/"):
                self.problems.append(
                    f"{path}.path: {vf['path']!r} is outside the outputs directory {outputs_of['outputs_dir']!r}: "
                    "the local executor collects output files only under hera__outputs_directory")
        elif "parameter" not in vf:
            self.problems.append(f"{path}.parameter: required for a {kind} template's output parameter")
        else:
            self._scan(vf["parameter"], f"{path}.parameter", outputs_of["vars"])

    # templates
    def _template(self, t: dict, path: str) -> None:
        if not _fields(t, path, "template", self.problems):
            return
        kinds = [k for k in TEMPLATE_TYPES if k in t]
        if len(kinds) != 1:
            self.problems.append(f"{path}: a template needs exactly one of {', '.join(TEMPLATE_TYPES)}"
                                 + (f" (has {', '.join(kinds)})" if kinds else ""))
            return
        kind = kinds[0]
        inputs = self._inputs(t, path)
        local = _Vars(self.globals | {"inputs.parameters"} | {f"inputs.parameters.{n}" for n in inputs})
        if kind in LEAF_TYPES:
            self._leaf(t, path, kind, local)
        else:
            if "activeDeadlineSeconds" in t:
                self.problems.append(f"{path}.activeDeadlineSeconds: only valid for leaf templates (as in Argo)")
            (self._dag if kind == "dag" else self._steps)(t, path, local)
        self._common(t, path, local)

    def _inputs(self, t: dict, path: str) -> list[str]:
        inputs = t.get("inputs")
        if inputs is None or not _fields(inputs, f"{path}.inputs", "inputs", self.problems):
            return []
        return self._parameters(inputs.get("parameters"), f"{path}.inputs.parameters",
                                value_from={"configMapKeyRef", "default"}, vars=_Vars(self.globals))

    def _common(self, t: dict, path: str, local: _Vars) -> None:
        for key in ("parallelism", "activeDeadlineSeconds"):
            if key in t:
                _int_or_template(t[key], f"{path}.{key}", self.problems)
                self._scan(t[key], f"{path}.{key}", local)
        self._retry(t.get("retryStrategy"), f"{path}.retryStrategy", local)
        self._synchronization(t.get("synchronization"), f"{path}.synchronization", local)

    def _retry(self, retry: Any, path: str, local: _Vars) -> None:
        if retry is None or not _fields(retry, path, "retryStrategy", self.problems):
            return
        if "limit" in retry:
            _int_or_template(retry["limit"], f"{path}.limit", self.problems)
        if retry.get("retryPolicy", "OnFailure") not in RETRY_POLICIES:
            self.problems.append(f"{path}.retryPolicy: {retry['retryPolicy']!r} is not one of {', '.join(RETRY_POLICIES)}")
        backoff = retry.get("backoff")
        if backoff is not None and _fields(backoff, f"{path}.backoff", "backoff", self.problems):
            if "duration" not in backoff:
                self.problems.append(f"{path}.backoff.duration: required (Argo: no base duration specified)")
            for key in ("duration", "maxDuration", "cap"):
                if key in backoff:
                    self._duration(backoff[key], f"{path}.backoff.{key}")
            if "factor" in backoff:
                _int_or_template(backoff["factor"], f"{path}.backoff.factor", self.problems)
        if "expression" in retry:
            self._expression(retry["expression"], f"{path}.expression",
                             _Vars(frozenset(f"lastRetry.{k}" for k in ("exitCode", "status", "duration", "message"))))
        self._scan({k: v for k, v in retry.items() if k != "expression"}, path, local)

    def _duration(self, value: Any, path: str) -> None:
        try:
            parse_duration(value)
        except ValueError as err:
            self.problems.append(f"{path}: {err}")

    def _synchronization(self, sync: Any, path: str, vars: _Vars) -> None:
        if sync is None or not _fields(sync, path, "synchronization", self.problems):
            return
        mutexes = _items(sync.get("mutexes"), f"{path}.mutexes", self.problems)
        semaphores = _items(sync.get("semaphores"), f"{path}.semaphores", self.problems)
        mutexes += [(f"{path}.mutex", sync["mutex"])] if "mutex" in sync else []
        semaphores += [(f"{path}.semaphore", sync["semaphore"])] if "semaphore" in sync else []
        for m_path, mutex in mutexes:
            if _fields(mutex, m_path, "mutex", self.problems) and not mutex.get("name"):
                self.problems.append(f"{m_path}.name: required")
        for s_path, sem in semaphores:
            if _fields(sem, s_path, "semaphore", self.problems):
                ref = sem.get("configMapKeyRef")
                if not isinstance(ref, dict) or not (ref.get("name") and ref.get("key")):
                    self.problems.append(f"{s_path}.configMapKeyRef: needs a name and a key")
        self._scan(sync, path, vars)

    # leaf templates
    def _leaf(self, t: dict, path: str, kind: str, local: _Vars) -> None:
        body, body_path = t[kind], f"{path}.{kind}"
        if not _fields(body, body_path, kind, self.problems):
            return
        command = body.get("command")
        if not command or not isinstance(command, list):
            self.problems.append(f"{body_path}.command: required locally (the image's entrypoint is unknown here)")
        if kind == "script" and not isinstance(body.get("source"), str):
            self.problems.append(f"{body_path}.source: required")
        outputs_dir = container_outputs_dir(body)
        outputs = self._outputs(t, path, {"kind": kind, "outputs_dir": outputs_dir})
        self._env(body, body_path)
        local = local.plus([f"outputs.parameters.{n}.path" for n in outputs] + ["pod.name", "retries", "node.name"])
        self._scan(body, body_path, local)

    def _env(self, body: dict, path: str) -> None:
        for e_path, env in _items(body.get("env"), f"{path}.env", self.problems):
            if not _fields(env, e_path, "env", self.problems):
                continue
            if not env.get("name"):
                self.problems.append(f"{e_path}.name: required")
            source = env.get("valueFrom")
            if source is not None and _fields(source, f"{e_path}.valueFrom", "envSource", self.problems):
                for key, ref in source.items():
                    if _fields(ref, f"{e_path}.valueFrom.{key}", "keyRef", self.problems) and not (
                            ref.get("name") and ref.get("key")):
                        self.problems.append(f"{e_path}.valueFrom.{key}: needs a name and a key")
        for e_path, env_from in _items(body.get("envFrom"), f"{path}.envFrom", self.problems):
            if _fields(env_from, e_path, "envFrom", self.problems):
                for key in ("configMapRef", "secretRef"):
                    if key in env_from and _fields(env_from[key], f"{e_path}.{key}", "envFromRef", self.problems) \
                            and not env_from[key].get("name"):
                        self.problems.append(f"{e_path}.{key}.name: required")

    def _outputs(self, t: dict, path: str, outputs_of: dict) -> list[str]:
        outputs = t.get("outputs")
        if outputs is None or not _fields(outputs, f"{path}.outputs", "outputs", self.problems):
            return []
        allowed = {"path", "default"} if outputs_of["kind"] in LEAF_TYPES else {"parameter", "default"}
        names = []
        for p_path, p in _items(outputs.get("parameters"), f"{path}.outputs.parameters", self.problems):
            if not _fields(p, p_path, "parameter", self.problems):
                continue
            for key in ("value", "enum"):
                if key in p:
                    self.problems.append(f"{p_path}.{key}: not supported for output parameters by the local executor")
            if "valueFrom" not in p:
                self.problems.append(f"{p_path}.valueFrom: required")
            self._value_from(p.get("valueFrom"), f"{p_path}.valueFrom", allowed, outputs_of)
            names.append(p.get("name", ""))
        return names

    # dag templates
    def _dag(self, t: dict, path: str, local: _Vars) -> None:
        dag, dag_path = t["dag"], f"{path}.dag"
        if not _fields(dag, dag_path, "dag", self.problems):
            return
        by_name: dict[str, dict] = {}
        paths: dict[str, str] = {}
        for t_path, task in _items(dag.get("tasks"), f"{dag_path}.tasks", self.problems):
            if _fields(task, t_path, "task", self.problems) and self._named(task, t_path, by_name):
                by_name[task["name"]] = task
                paths[task["name"]] = t_path
        deps = {name: self._task_dependencies(task, paths[name], by_name) for name, task in by_name.items()}
        if self._cycle(deps, dag_path):
            return
        for name, task in by_name.items():
            ancestors = _ancestors(name, deps)
            names = [n for a in ancestors for n in self._node_vars("tasks", a, by_name[a])]
            self._call(task, paths[name], local.plus(names, item=_expands(task)))
        all_names = [n for name, task in by_name.items() for n in self._node_vars("tasks", name, task)]
        self._outputs(t, path, {"kind": "dag", "vars": local.plus(all_names)})

    def _named(self, node: dict, path: str, seen: Mapping[str, Any]) -> bool:
        name = node.get("name")
        if not name:
            self.problems.append(f"{path}.name: required")
        elif name in seen:
            self.problems.append(f"{path}: duplicate name {name!r}")
        elif not re.fullmatch(r"[a-zA-Z0-9][-a-zA-Z0-9_]*", name):
            self.problems.append(f"{path}.name: {name!r} must be letters, digits, '-' and '_'")
        else:
            return True
        return False

    def _task_dependencies(self, task: dict, path: str, tasks: dict[str, dict]) -> list[str]:
        if "depends" in task and "dependencies" in task:
            self.problems.append(f"{path}: use either depends or dependencies, not both (as in Argo)")
        names: list[str] = []
        if "depends" in task:
            try:
                names = list(parse_depends(str(task["depends"])).tasks)
            except ExpressionError as err:
                self.problems.append(f"{path}.depends: {err}")
        elif "dependencies" in task:
            if not isinstance(task["dependencies"], list):
                self.problems.append(f"{path}.dependencies: expected a list")
            else:
                names = [str(d) for d in task["dependencies"]]
        for name in names:
            if name not in tasks:
                self.problems.append(f"{path}: depends on {name!r}, which is not a task of this DAG")
        return [n for n in names if n in tasks]

    def _cycle(self, deps: dict[str, list[str]], path: str) -> bool:
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> list[str] | None:
            if state.get(node) == 2:
                return None
            if state.get(node) == 1:
                return trail[trail.index(node):] + [node]
            state[node] = 1
            for dep in deps[node]:
                if found := visit(dep, trail + [node]):
                    return found
            state[node] = 2
            return None

        for node in deps:
            if cycle := visit(node, []):
                self.problems.append(f"{path}: dependency cycle {' -> '.join(reversed(cycle))}")
                return True
        return False

    def _node_vars(self, prefix: str, name: str, node: dict) -> list[str]:
        """Variables that a finished task or step makes available to those after it."""
        base = f"{prefix}.{name}"
        names = [f"{base}.{k}" for k in ("status", "id", "startedAt", "finishedAt")]
        target = self.templates.get(node.get("template", ""))
        if target is None:
            return names
        leaf = any(k in target for k in LEAF_TYPES)
        if _expands(node):  # a fanned-out node offers its children's outputs as JSON lists
            return names + [f"{base}.outputs.parameters"] + ([f"{base}.outputs.result"] if leaf else [])
        if leaf:
            names += [f"{base}.outputs.result", f"{base}.exitCode"]
        outputs = (target.get("outputs") or {}).get("parameters") or []
        return names + [f"{base}.outputs.parameters.{p.get('name')}" for p in outputs if isinstance(p, dict)]

    # steps templates
    def _steps(self, t: dict, path: str, local: _Vars) -> None:
        groups = t["steps"]
        if not isinstance(groups, list):
            self.problems.append(f"{path}.steps: expected a list of step groups")
            return
        seen: dict[str, dict] = {}
        before: list[str] = []
        for i, group in enumerate(groups):
            g_path = f"{path}.steps[{i}]"
            if not isinstance(group, list):
                self.problems.append(f"{g_path}: expected a list of steps (a parallel group)")
                continue
            current: list[tuple[str, dict, str]] = []
            for s_path, step in _items(group, g_path, self.problems):
                if _fields(step, s_path, "step", self.problems) and self._named(step, s_path, seen):
                    seen[step["name"]] = step
                    current.append((step["name"], step, s_path))
            for _name, step, s_path in current:
                self._call(step, s_path, local.plus(before, item=_expands(step)))
            before += [n for name, step, _p in current for n in self._node_vars("steps", name, step)]
        self._outputs(t, path, {"kind": "steps", "vars": local.plus(before)})

    # a task or a step calling a template
    def _call(self, node: dict, path: str, vars: _Vars) -> None:
        if "templateRef" in node or "inline" in node:
            return  # already reported as unsupported fields
        target = self.templates.get(node.get("template", ""))
        if target is None:
            self.problems.append(f"{path}.template: no template named {node.get('template')!r}")
        args = node.get("arguments")
        if args is not None and _fields(args, f"{path}.arguments", "arguments", self.problems):
            given = self._parameters(args.get("parameters"), f"{path}.arguments.parameters",
                                     value_from=set(), vars=vars)
            for p_path, p in _items(args.get("parameters"), f"{path}.arguments.parameters", []):
                if isinstance(p, dict) and "value" not in p:
                    self.problems.append(f"{p_path}.value: required")
            if target is not None:
                self._arguments_match(given, target, f"{path}.arguments.parameters")
        elif target is not None:
            self._arguments_match([], target, f"{path}.arguments.parameters")
        if "continueOn" in node:
            _fields(node["continueOn"], f"{path}.continueOn", "continueOn", self.problems)
        if "withItems" in node and not isinstance(node["withItems"], list):
            self.problems.append(f"{path}.withItems: expected a list")
        if "withItems" in node and "withParam" in node:
            self.problems.append(f"{path}: use either withItems or withParam, not both")
        if "when" in node:
            try:
                check_when(str(node["when"]))
            except ExpressionError as err:
                self.problems.append(f"{path}.when: {err}")
        self._scan({k: node[k] for k in ("when", "withItems", "withParam") if k in node}, path, vars)

    def _arguments_match(self, given: list[str], target: dict, path: str) -> None:
        declared = {p.get("name"): p for p in (target.get("inputs") or {}).get("parameters") or [] if isinstance(p, dict)}
        for name in given:
            if name and name not in declared:
                self.problems.append(f"{path}: template {target['name']!r} has no input parameter {name!r}")
        for name, p in declared.items():
            if name not in given and not ({"value", "default"} & set(p) or "configMapKeyRef" in (p.get("valueFrom") or {})):
                self.problems.append(f"{path}: input parameter {name!r} of template {target['name']!r} "
                                     "is required and not supplied")

    # variables
    def _scan(self, value: Any, path: str, vars: _Vars) -> None:
        """Check every {{tag}} in every string below `value` against the variables in scope."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._scan(item, _join(path, str(key)), vars)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._scan(item, f"{path}[{i}]", vars)
        elif isinstance(value, str):
            for tag in tags(value):
                if tag.startswith("="):
                    self._expression(tag[1:], path, vars)
                elif not vars.has(tag):
                    self.problems.append(f"{path}: {{{{{tag}}}}} refers to nothing in scope{_why(tag)}")

    def _expression(self, text: str, path: str, vars: _Vars) -> None:
        try:
            names = expression_variables(text)
        except ExpressionError as err:
            self.problems.append(f"{path}: unsupported expression {{{{={text}}}}}: {err} (the local executor "
                                 "implements literals, variables, comparisons, &&, ||, !, ?:, asInt, asFloat, string)")
            return
        for name in names:
            if not vars.has(name):
                self.problems.append(f"{path}: expression {{{{={text}}}}} reads {name!r}, which is not in scope{_why(name)}")


def _why(tag: str) -> str:
    parts = tag.split(".")
    if parts[0] in ("tasks", "steps") and len(parts) > 2:
        return (f" (is {parts[1]!r} a {parts[0][:-1]} that runs before this one, with that output? "
                "a DAG task must depend on it, a step must be in an earlier group)")
    if parts[0] == "inputs":
        return " (the template does not declare that input)"
    if parts[0] == "workflow" and len(parts) > 2 and parts[1] == "parameters":
        return " (spec.arguments.parameters does not declare it)"
    if parts[0] == "item":
        return " (only tasks and steps with withItems or withParam have {{item}})"
    return ""


def _ancestors(name: str, deps: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(deps[name])
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(deps[node])
    return seen


def _expands(node: Mapping[str, Any]) -> bool:
    return "withItems" in node or "withParam" in node


def container_outputs_dir(body: Mapping[str, Any]) -> str:
    """Where a Hera runner script writes its outputs inside the container (RunnerScriptConstructor)."""
    for env in body.get("env") or []:
        if isinstance(env, dict) and env.get("name") == "hera__outputs_directory" and "value" in env:
            return str(env["value"]).rstrip("/")
    return "/tmp/hera-outputs"

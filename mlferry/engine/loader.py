"""Load an Argo Workflow, WorkflowTemplate or CronWorkflow and check that it can run locally.

The document's fields are checked against what the engine implements (engine.fields), and its
references and variables as Argo's validator checks them (engine.validation); a Workflow that
references a WorkflowTemplate is merged onto it first, as `argo submit --from` would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mlferry.engine.expressions import argo_string
from mlferry.engine.fields import API_VERSION, WORKFLOW_KINDS, check_fields
from mlferry.engine.validation import Checker


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
    check_fields(doc, "", "document", problems)
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
    Checker(spec, spec_path, _labels(doc), problems).check()
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
    if len(docs) > 1:
        found = ", ".join(f"{d.get('kind', '?')}/{_doc_name(d)}" if isinstance(d, dict) else type(d).__name__
                          for d in docs)
        raise PlanError(str(path), [f"found {len(docs)} documents ({found}); a local run takes one file per "
                                    "workflow: put each in its own file and submit the one to run (`argo submit` "
                                    "would submit each Workflow in turn)"])
    if not docs or not isinstance(docs[0], dict):
        raise PlanError(str(path), ["expected one YAML document (a mapping), found "
                                    + (type(docs[0]).__name__ if docs else "none")])
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
    check_fields(spec, "spec", "cron", problems)
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
    check_fields(ref, f"{path}.workflowTemplateRef", "templateRef", problems)
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
        value=None if value is None else argo_string(value),
        enum=tuple(argo_string(v) for v in p.get("enum") or ()),
        description=p.get("description", ""),
        config_map_key=(ref["name"], ref["key"]) if ref else None,
    )

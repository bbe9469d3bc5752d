"""The checks Argo's validator makes (workflow/validate), made when a document is loaded.

References: the entrypoint, each task's template, `depends`/`dependencies` targets, arguments
against the called template's inputs, every `{{variable}}` against the names in scope where it is
used (engine.scope), and cycles. Field by field, each object is also checked against what the
engine implements (engine.fields). One class: each check needs the template index and the names
in scope that the walk has built so far.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from mlferry.engine.containers import container_outputs_dir
from mlferry.engine.expressions import (
    ExpressionError,
    argo_string,
    check_when,
    depends_text,
    expression_variables,
    parse_depends,
    tags,
)
from mlferry.engine.parameters import has_own_value
from mlferry.engine.fields import LEAF_TYPES, RETRY_POLICIES, TEMPLATE_TYPES, check_fields, join, list_items
from mlferry.engine.retries import parse_duration
from mlferry.engine.scope import (
    LAST_RETRY_NAMES,
    STEPS,
    TASKS,
    Names,
    input_names,
    node_names,
    pod_names,
    workflow_names,
)


def _int_or_template(value: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and (
            value.strip().isdigit() or tags(value)))):
        problems.append(f"{path}: expected an integer, got {value!r}")


# -- the checker ------------------------------------------------------------------------------

class Checker:
    def __init__(self, spec: dict, path: str, metadata_keys: dict[str, set[str]], problems: list[str]):
        self.spec, self.path, self.problems = spec, path, problems
        self.templates: dict[str, dict] = {}
        self.template_paths: dict[str, str] = {}
        params = [p.get("name") for p in (spec.get("arguments") or {}).get("parameters", []) if isinstance(p, dict)]
        self.globals = workflow_names([p for p in params if p], metadata_keys["labels"], metadata_keys["annotations"])

    def check(self) -> None:
        if not check_fields(self.spec, self.path, "spec", self.problems):
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
        self._synchronization(self.spec.get("synchronization"), f"{self.path}.synchronization", Names(self.globals))
        for name, template in self.templates.items():
            self._template(template, self.template_paths[name])

    # workflow level
    def _index_templates(self) -> None:
        for path, template in list_items(self.spec.get("templates"), f"{self.path}.templates", self.problems):
            if not isinstance(template, dict) or not template.get("name"):
                self.problems.append(f"{path}: a template needs a name")
            elif template["name"] in self.templates:
                self.problems.append(f"{path}: duplicate template name {template['name']!r}")
            else:
                self.templates[template["name"]] = template
                self.template_paths[template["name"]] = path
        if not self.templates:
            self.problems.append(f"{self.path}.templates: required")

    def _workflow_arguments(self) -> None:
        args = self.spec.get("arguments")
        if args is None:
            return
        path = f"{self.path}.arguments"
        if check_fields(args, path, "arguments", self.problems):
            self._parameters(args.get("parameters"), f"{path}.parameters", value_from={"configMapKeyRef", "default"},
                             vars=Names(frozenset()))

    def _parameters(self, params: Any, path: str, *, value_from: set[str], vars: Names) -> list[str]:
        names = []
        for p_path, p in list_items(params, path, self.problems):
            if not check_fields(p, p_path, "parameter", self.problems):
                continue
            if not p.get("name"):
                self.problems.append(f"{p_path}.name: required")
            elif p["name"] in names:
                self.problems.append(f"{p_path}: duplicate parameter {p['name']!r}")
            names.append(p.get("name", ""))
            enum = [argo_string(v) for v in p.get("enum") or []]
            for key in ("value", "default"):
                if enum and key in p and tags(argo_string(p[key])) == [] and argo_string(p[key]) not in enum:
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
            if check_fields(ref, f"{path}.configMapKeyRef", "keyRef", self.problems) and not (ref.get("name") and ref.get("key")):
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
        if not check_fields(t, path, "template", self.problems):
            return
        kinds = [k for k in TEMPLATE_TYPES if k in t]
        if len(kinds) != 1:
            self.problems.append(f"{path}: a template needs exactly one of {', '.join(TEMPLATE_TYPES)}"
                                 + (f" (has {', '.join(kinds)})" if kinds else ""))
            return
        kind = kinds[0]
        inputs = self._inputs(t, path)
        local = Names(self.globals | input_names(inputs))
        if kind in LEAF_TYPES:
            self._leaf(t, path, kind, local)
        else:
            if "activeDeadlineSeconds" in t:
                self.problems.append(f"{path}.activeDeadlineSeconds: only valid for leaf templates (as in Argo)")
            (self._dag if kind == "dag" else self._steps)(t, path, local)
        self._common(t, path, local)

    def _inputs(self, t: dict, path: str) -> list[str]:
        inputs = t.get("inputs")
        if inputs is None or not check_fields(inputs, f"{path}.inputs", "inputs", self.problems):
            return []
        return self._parameters(inputs.get("parameters"), f"{path}.inputs.parameters",
                                value_from={"configMapKeyRef", "default"}, vars=Names(self.globals))

    def _common(self, t: dict, path: str, local: Names) -> None:
        for key in ("parallelism", "activeDeadlineSeconds"):
            if key in t:
                _int_or_template(t[key], f"{path}.{key}", self.problems)
                self._scan(t[key], f"{path}.{key}", local)
        self._retry(t.get("retryStrategy"), f"{path}.retryStrategy", local)
        self._synchronization(t.get("synchronization"), f"{path}.synchronization", local)

    def _retry(self, retry: Any, path: str, local: Names) -> None:
        if retry is None or not check_fields(retry, path, "retryStrategy", self.problems):
            return
        if "limit" in retry:
            _int_or_template(retry["limit"], f"{path}.limit", self.problems)
        if retry.get("retryPolicy", "OnFailure") not in RETRY_POLICIES:
            self.problems.append(f"{path}.retryPolicy: {retry['retryPolicy']!r} is not one of {', '.join(RETRY_POLICIES)}")
        backoff = retry.get("backoff")
        if backoff is not None and check_fields(backoff, f"{path}.backoff", "backoff", self.problems):
            if "duration" not in backoff:
                self.problems.append(f"{path}.backoff.duration: required (Argo: no base duration specified)")
            for key in ("duration", "maxDuration", "cap"):
                if key in backoff:
                    self._duration(backoff[key], f"{path}.backoff.{key}")
            if "factor" in backoff:
                _int_or_template(backoff["factor"], f"{path}.backoff.factor", self.problems)
        if "expression" in retry:
            self._expression(retry["expression"], f"{path}.expression", Names(LAST_RETRY_NAMES))
        self._scan({k: v for k, v in retry.items() if k != "expression"}, path, local)

    def _duration(self, value: Any, path: str) -> None:
        try:
            parse_duration(value)
        except ValueError as err:
            self.problems.append(f"{path}: {err}")

    def _synchronization(self, sync: Any, path: str, vars: Names) -> None:
        if sync is None or not check_fields(sync, path, "synchronization", self.problems):
            return
        mutexes = list_items(sync.get("mutexes"), f"{path}.mutexes", self.problems)
        semaphores = list_items(sync.get("semaphores"), f"{path}.semaphores", self.problems)
        mutexes += [(f"{path}.mutex", sync["mutex"])] if "mutex" in sync else []
        semaphores += [(f"{path}.semaphore", sync["semaphore"])] if "semaphore" in sync else []
        for m_path, mutex in mutexes:
            if check_fields(mutex, m_path, "mutex", self.problems) and not mutex.get("name"):
                self.problems.append(f"{m_path}.name: required")
        for s_path, sem in semaphores:
            if check_fields(sem, s_path, "semaphore", self.problems):
                ref = sem.get("configMapKeyRef")
                if not isinstance(ref, dict) or not (ref.get("name") and ref.get("key")):
                    self.problems.append(f"{s_path}.configMapKeyRef: needs a name and a key")
        self._scan(sync, path, vars)

    # leaf templates
    def _leaf(self, t: dict, path: str, kind: str, local: Names) -> None:
        body, body_path = t[kind], f"{path}.{kind}"
        if not check_fields(body, body_path, kind, self.problems):
            return
        command = body.get("command")
        if not command or not isinstance(command, list):
            self.problems.append(f"{body_path}.command: required locally (the image's entrypoint is unknown here)")
        if kind == "script" and not isinstance(body.get("source"), str):
            self.problems.append(f"{body_path}.source: required")
        outputs_dir = container_outputs_dir(body)
        outputs = self._outputs(t, path, {"kind": kind, "outputs_dir": outputs_dir})
        self._env(body, body_path)
        local = local.plus(pod_names(outputs))
        self._scan(body, body_path, local)

    def _env(self, body: dict, path: str) -> None:
        for e_path, env in list_items(body.get("env"), f"{path}.env", self.problems):
            if not check_fields(env, e_path, "env", self.problems):
                continue
            if not env.get("name"):
                self.problems.append(f"{e_path}.name: required")
            source = env.get("valueFrom")
            if source is not None and check_fields(source, f"{e_path}.valueFrom", "envSource", self.problems):
                for key, ref in source.items():
                    if check_fields(ref, f"{e_path}.valueFrom.{key}", "keyRef", self.problems) and not (
                            ref.get("name") and ref.get("key")):
                        self.problems.append(f"{e_path}.valueFrom.{key}: needs a name and a key")
        for e_path, env_from in list_items(body.get("envFrom"), f"{path}.envFrom", self.problems):
            if check_fields(env_from, e_path, "envFrom", self.problems):
                for key in ("configMapRef", "secretRef"):
                    if key in env_from and check_fields(env_from[key], f"{e_path}.{key}", "envFromRef", self.problems) \
                            and not env_from[key].get("name"):
                        self.problems.append(f"{e_path}.{key}.name: required")

    def _outputs(self, t: dict, path: str, outputs_of: dict) -> list[str]:
        outputs = t.get("outputs")
        if outputs is None or not check_fields(outputs, f"{path}.outputs", "outputs", self.problems):
            return []
        allowed = {"path", "default"} if outputs_of["kind"] in LEAF_TYPES else {"parameter", "default"}
        names = []
        for p_path, p in list_items(outputs.get("parameters"), f"{path}.outputs.parameters", self.problems):
            if not check_fields(p, p_path, "parameter", self.problems):
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
    def _dag(self, t: dict, path: str, local: Names) -> None:
        dag, dag_path = t["dag"], f"{path}.dag"
        if not check_fields(dag, dag_path, "dag", self.problems):
            return
        by_name: dict[str, dict] = {}
        paths: dict[str, str] = {}
        for t_path, task in list_items(dag.get("tasks"), f"{dag_path}.tasks", self.problems):
            if check_fields(task, t_path, "task", self.problems) and self._named(task, t_path, by_name):
                by_name[task["name"]] = task
                paths[task["name"]] = t_path
        deps = {name: self._task_dependencies(task, paths[name], by_name) for name, task in by_name.items()}
        if self._cycle(deps, dag_path):
            return
        for name, task in by_name.items():
            ancestors = _ancestors(name, deps)
            names = [n for a in ancestors for n in self._node_names(TASKS, a, by_name[a])]
            self._call(task, paths[name], local.plus(names, item=_expands(task)))
        all_names = [n for name, task in by_name.items() for n in self._node_names(TASKS, name, task)]
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
        if "dependencies" in task and "depends" not in task and not isinstance(task["dependencies"], list):
            self.problems.append(f"{path}.dependencies: expected a list")
        else:
            try:
                names = list(parse_depends(depends_text(task)).tasks)
            except ExpressionError as err:
                self.problems.append(f"{path}.{'depends' if 'depends' in task else 'dependencies'}: {err}")
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

    def _node_names(self, prefix: str, name: str, node: dict) -> list[str]:
        """Variables that a finished task or step makes available to those after it."""
        return node_names(prefix, name, self.templates.get(node.get("template", "")), expanded=_expands(node))

    # steps templates
    def _steps(self, t: dict, path: str, local: Names) -> None:
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
            for s_path, step in list_items(group, g_path, self.problems):
                if check_fields(step, s_path, "step", self.problems) and self._named(step, s_path, seen):
                    seen[step["name"]] = step
                    current.append((step["name"], step, s_path))
            for _name, step, s_path in current:
                self._call(step, s_path, local.plus(before, item=_expands(step)))
            before += [n for name, step, _p in current for n in self._node_names(STEPS, name, step)]
        self._outputs(t, path, {"kind": "steps", "vars": local.plus(before)})

    # a task or a step calling a template
    def _call(self, node: dict, path: str, vars: Names) -> None:
        if "templateRef" in node or "inline" in node:
            return  # already reported as unsupported fields
        target = self.templates.get(node.get("template", ""))
        if target is None:
            self.problems.append(f"{path}.template: no template named {node.get('template')!r}")
        args = node.get("arguments")
        if args is not None and check_fields(args, f"{path}.arguments", "arguments", self.problems):
            given = self._parameters(args.get("parameters"), f"{path}.arguments.parameters",
                                     value_from=set(), vars=vars)
            for p_path, p in list_items(args.get("parameters"), f"{path}.arguments.parameters", []):
                if isinstance(p, dict) and "value" not in p:
                    self.problems.append(f"{p_path}.value: required")
            if target is not None:
                self._arguments_match(given, target, f"{path}.arguments.parameters")
        elif target is not None:
            self._arguments_match([], target, f"{path}.arguments.parameters")
        if "continueOn" in node:
            check_fields(node["continueOn"], f"{path}.continueOn", "continueOn", self.problems)
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
            if name not in given and not has_own_value(p):
                self.problems.append(f"{path}: input parameter {name!r} of template {target['name']!r} "
                                     "is required and not supplied")

    # variables
    def _scan(self, value: Any, path: str, vars: Names) -> None:
        """Check every {{tag}} in every string below `value` against the variables in scope."""
        if isinstance(value, dict):
            for key, item in value.items():
                self._scan(item, join(path, str(key)), vars)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._scan(item, f"{path}[{i}]", vars)
        elif isinstance(value, str):
            for tag in tags(value):
                if tag.startswith("="):
                    self._expression(tag[1:], path, vars)
                elif not vars.has(tag):
                    self.problems.append(f"{path}: {{{{{tag}}}}} refers to nothing in scope{_why(tag)}")

    def _expression(self, text: str, path: str, vars: Names) -> None:
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

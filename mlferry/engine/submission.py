"""What a run is given, checked before anything runs, as `argo submit` and the kubelet check it.

The workflow's parameters (declared, required, enum) and the ConfigMaps and Secrets its pods read
(configMapKeyRef, secretKeyRef, envFrom). On a laptop there is no cluster to hold them, so a
`Cluster` is a parameter of the run: local mode reads Secrets from environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from mlferry.engine.expressions import tags
from mlferry.engine.loader import Plan, WorkflowParameter
from mlferry.engine.parameters import has_own_value


class ArgumentError(ValueError):
    """The run cannot start: a parameter, ConfigMap or Secret it needs is missing or invalid.

    `unset_variables`: in local mode, the environment variables that would have held them.
    """

    def __init__(self, message: str, unset_variables: list[str] | None = None):
        super().__init__(message)
        self.unset_variables = unset_variables or []


@dataclass(frozen=True)
class Cluster:
    """The ConfigMaps and Secrets a pod would read (name -> key -> value)."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         config_maps: Mapping[str, Mapping[str, str]] | None = None) -> "Cluster":
        """Local mode: every Secret (and ConfigMap, unless given) reads its keys from environment variables."""
        everywhere = _SameForEveryName(dict(os.environ if environ is None else environ))
        return cls(everywhere if config_maps is None else config_maps, everywhere)

    def lookup(self, kind: str, name: str, key: str, namespace: str) -> str:
        objects = self.config_maps if kind == "ConfigMap" else self.secrets
        if name not in objects:
            raise LookupError(f"{kind.lower()} \"{name}\" not found")
        if key not in objects[name]:
            hint = f" (local mode reads {kind} keys from environment variables: set {key})" \
                if isinstance(objects, _SameForEveryName) else ""
            raise LookupError(f"couldn't find key {key} in {kind} {namespace}/{name}{hint}")
        return objects[name][key]


class _SameForEveryName(Mapping):
    def __init__(self, values: Mapping[str, str]):
        self.values = values

    def __getitem__(self, name: str) -> Mapping[str, str]:
        return self.values

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def workflow_arguments(plan: Plan, given: Mapping[str, str], cluster: Cluster, namespace: str) -> dict[str, str]:
    """The workflow's parameter values, checked as `argo submit` checks them, before anything runs."""
    declared = {p.name: p for p in plan.parameters}
    problems = [f"unknown parameter {name!r} (the workflow declares: {', '.join(declared) or 'none'})"
                for name in given if name not in declared]
    values = {}
    for p in plan.parameters:
        value = _parameter_value(p, given, cluster, namespace, problems)
        if value is None:
            continue
        if p.enum and value not in p.enum:
            problems.append(f"parameter {p.name}: {value!r} is not one of {', '.join(p.enum)}")
        values[p.name] = value
    problems += _unsupplied_inputs(plan, values)
    if problems:
        raise ArgumentError("; ".join(problems))
    return values


def _unsupplied_inputs(plan: Plan, values: Mapping[str, str]) -> list[str]:
    """The entrypoint and onExit are called with the workflow's arguments; an input they need that
    no argument supplies fails the submission, in Argo's words (validate.go runs ProcessArgs on
    the entrypoint with spec.arguments)."""
    problems = []
    for role in ("entrypoint", "onExit"):
        name = plan.spec.get(role)
        for p in ((plan.templates.get(name) or {}).get("inputs") or {}).get("parameters") or []:
            if p["name"] not in values and not has_own_value(p):
                problems.append(f"templates.{name}.inputs.parameters.{p['name']} was not supplied "
                                f"(the {role} template takes its inputs from the workflow's arguments: "
                                f"declare {p['name']!r} in spec.arguments.parameters or pass -p {p['name']}=…)")
    return problems


def _parameter_value(p: WorkflowParameter, given: Mapping[str, str], cluster: Cluster, namespace: str,
                     problems: list[str]) -> str | None:
    if p.name in given:
        return str(given[p.name])
    if p.config_map_key is not None:
        try:
            return cluster.lookup("ConfigMap", *p.config_map_key, namespace)
        except LookupError as err:
            if p.value is None:
                problems.append(f"parameter {p.name}: {err}")
                return None
    if p.value is None:
        problems.append(f"parameter {p.name!r} is required (no value and no default)")
    return p.value


def check_environment(plan: Plan, cluster: Cluster, namespace: str) -> None:
    """Every ConfigMap and Secret key the reachable templates read must exist (unless optional)."""
    problems: dict[str, list[str]] = {}  # what is missing -> templates that need it
    unset: dict[str, str] = {}  # local mode: environment variable -> the object it stands for
    for name in sorted(_reachable(plan)):
        t = plan.templates[name]
        body = t.get("script") or t.get("container") or {}
        for var in body.get("env") or []:
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = (var.get("valueFrom") or {}).get(key)
                if ref is None or ref.get("optional") or tags(f"{ref['name']}{ref['key']}"):
                    continue
                try:
                    cluster.lookup(kind, ref["name"], ref["key"], namespace)
                except LookupError as err:
                    objects = cluster.config_maps if kind == "ConfigMap" else cluster.secrets
                    if isinstance(objects, _SameForEveryName):
                        unset.setdefault(ref["key"], f"{kind} {ref['name']}")
                    else:
                        problems.setdefault(str(err), []).append(name)
    if unset:  # one sentence: which variables to set, each named once
        keys = list(unset)
        what = ", ".join(sorted(set(unset.values())))
        problems[f"{' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} not set (local mode reads {what} "
                 f"from environment variables)"] = []
    if problems:
        raise ArgumentError("; ".join(f"{err} (needed by {', '.join(names)})" if names else err
                                      for err, names in problems.items()), list(unset))


def secret_keys(node: Any) -> set[str]:
    """Every key any `secretKeyRef` in the document names."""
    if isinstance(node, Mapping):
        own = {str(node["secretKeyRef"].get("key"))} if isinstance(node.get("secretKeyRef"), Mapping) else set()
        return own.union(*(secret_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(secret_keys(v) for v in node))
    return set()


def _reachable(plan: Plan) -> set[str]:
    seen: set[str] = set()
    stack = [plan.entrypoint] + ([plan.spec["onExit"]] if plan.spec.get("onExit") else [])
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        t = plan.templates[name]
        calls = (t.get("dag") or {}).get("tasks") or [s for group in t.get("steps") or [] for s in group]
        stack.extend(c["template"] for c in calls)
    return seen

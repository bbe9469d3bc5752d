"""A template's input and output parameters: their values when it is called and when it ends.

Inputs come from the caller's arguments, else `value`/`default`, else a ConfigMap (common/util.go,
ProcessArgs); outputs of a DAG or steps template come from its children (dag.go,
getTemplateOutputsFromScope), and a skipped node offers each output's `valueFrom.default`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from mlferry.engine.expressions import Unresolved, argo_string, substitute
from mlferry.engine.nodes import NodeError

if TYPE_CHECKING:
    from mlferry.engine.submission import Cluster


def has_own_value(p: Mapping[str, Any]) -> bool:
    """An input parameter that needs no argument: a value, a default, or a ConfigMap key."""
    return bool({"value", "default"} & set(p)) or "configMapKeyRef" in (p.get("valueFrom") or {})


def template_inputs(t: Mapping[str, Any], arguments: Mapping[str, str], globals_: Mapping[str, str],
                    cluster: "Cluster", namespace: str) -> list[dict[str, Any]]:
    """Each input parameter as Argo marshals it into {{inputs.parameters}}, its value resolved."""
    resolved = []
    for p in (t.get("inputs") or {}).get("parameters") or []:
        value = arguments.get(p["name"], p.get("value", p.get("default")))
        ref = (p.get("valueFrom") or {}).get("configMapKeyRef")
        if p["name"] not in arguments and ref is not None:
            value = _config_map_value(p, ref, cluster, namespace)
        if value is None:
            raise NodeError(f"inputs.parameters.{p['name']} was not supplied")
        resolved.append(_parameter_json(p, substitute(argo_string(value), globals_)))
    return resolved


def _config_map_value(p: Mapping[str, Any], ref: Mapping[str, str], cluster: "Cluster", namespace: str) -> str:
    try:
        return cluster.lookup("ConfigMap", ref["name"], ref["key"], namespace)
    except LookupError as err:
        default = (p.get("valueFrom") or {}).get("default")
        if default is None:
            raise NodeError(f"unable to retrieve inputs.parameters.{p['name']} from ConfigMap: {err}") from None
        return argo_string(default)


def _parameter_json(p: Mapping[str, Any], value: str) -> dict[str, Any]:
    """An input parameter in Go's field order, as `{{inputs.parameters}}` shows it."""
    out: dict[str, Any] = {"name": p["name"]}
    if "default" in p:
        out["default"] = argo_string(p["default"])
    out["value"] = value
    if p.get("enum"):
        out["enum"] = [argo_string(v) for v in p["enum"]]
    if p.get("description"):
        out["description"] = p["description"]
    return out


def skipped_outputs(t: Mapping[str, Any]) -> dict[str, str]:
    """A skipped node offers its outputs' valueFrom.default, if any (Argo v4)."""
    return {p["name"]: argo_string(p["valueFrom"]["default"]) for p in (t.get("outputs") or {}).get("parameters") or []
            if "default" in (p.get("valueFrom") or {})}


def template_outputs(t: Mapping[str, Any], scope: Mapping[str, str]) -> dict[str, str]:
    """A DAG or steps template's outputs, from its children's variables in `scope`."""
    out = {}
    for p in (t.get("outputs") or {}).get("parameters") or []:
        source = p["valueFrom"]
        try:
            out[p["name"]] = substitute(str(source["parameter"]), scope, allow_unresolved=False)
        except Unresolved as err:
            if "default" not in source:
                raise NodeError(f"outputs.parameters.{p['name']}: {err}") from None
            out[p["name"]] = argo_string(source["default"])
    return out

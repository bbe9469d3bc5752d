"""Which `{{variables}}` exist where, and their values: one table for the loader and the executor.

Argo resolves tags against a scope that grows as a workflow runs (operator.go, buildLocalScope;
validate.go checks the same names before the run). The loader checks each tag against the names
in scope where it is written; the executor fills in the values. Both ask this module, and each
set of names is the keys of its value builder called with stand-ins, so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mlferry.engine.expressions import argo_string, to_json
from mlferry.engine.fields import is_leaf
from mlferry.engine.nodes import Outcome
from mlferry.engine.runs import SUCCEEDED, TaskRecord

TASKS, STEPS = "tasks", "steps"  # the prefixes of a DAG task's and a step's variables


@dataclass(frozen=True)
class Names:
    """The variable names in scope at one place in a template (the loader's view of a scope)."""

    names: frozenset[str]
    item: bool = False  # inside withItems/withParam: `item` and any `item.<key>`

    def has(self, name: str) -> bool:
        return name in self.names or (self.item and (name == "item" or name.startswith("item.")))

    def plus(self, names: Iterable[str] = (), item: bool = False) -> "Names":
        return Names(self.names | frozenset(names), self.item or item)


# -- the workflow -----------------------------------------------------------------------------

def workflow_vars(*, name: str, namespace: str, uid: str, created: str, status: str, entrypoint: str,
                  parameters: Mapping[str, str], labels: Mapping[str, Any],
                  annotations: Mapping[str, Any]) -> dict[str, str]:
    """`workflow.*` fixed when the run is submitted (only `status` changes, for the exit handler)."""
    out = {"workflow.name": name, "workflow.namespace": namespace, "workflow.uid": uid,
           "workflow.creationTimestamp": created, "workflow.status": status, "workflow.mainEntrypoint": entrypoint,
           "workflow.parameters.json": to_json([{"name": k, "value": v} for k, v in parameters.items()])}
    out.update({f"workflow.parameters.{k}": v for k, v in parameters.items()})
    out.update({f"workflow.labels.{k}": str(v) for k, v in labels.items()})
    out.update({f"workflow.annotations.{k}": str(v) for k, v in annotations.items()})
    return out


def run_state_vars(duration: float, failures: Iterable[TaskRecord]) -> dict[str, str]:
    """`workflow.*` that change as the run goes: its duration, and the nodes that failed so far."""
    failed = [{"displayName": r.name, "message": r.message, "templateName": r.template, "phase": r.phase,
               "podName": r.name, "finishedAt": r.finished} for r in failures]
    return {"workflow.duration": f"{duration:.6f}", "workflow.failures": to_json(failed)}


def workflow_names(parameters: Iterable[str], labels: Iterable[str], annotations: Iterable[str]) -> frozenset[str]:
    """Every `workflow.*` a template may use."""
    blank = dict.fromkeys
    fixed = workflow_vars(name="", namespace="", uid="", created="", status="", entrypoint="",
                          parameters=blank(parameters, ""), labels=blank(labels, ""), annotations=blank(annotations, ""))
    return frozenset(fixed) | frozenset(run_state_vars(0.0, ()))


# -- one template call ------------------------------------------------------------------------

def input_vars(parameters: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """`inputs.parameters.<name>`, and `inputs.parameters` as the JSON list Argo marshals."""
    parameters = list(parameters)
    out = {f"inputs.parameters.{p['name']}": p["value"] for p in parameters}
    out["inputs.parameters"] = to_json(parameters)  # what `source: '{{inputs.parameters}}'` receives
    return out


def input_names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(input_vars({"name": n, "value": ""} for n in names))


def pod_vars(*, pod_name: str, node_name: str, retries: int, output_paths: Mapping[str, str]) -> dict[str, str]:
    """What a script or container template sees of its own pod."""
    return {"pod.name": pod_name, "node.name": node_name, "retries": str(retries),
            **{f"outputs.parameters.{k}.path": v for k, v in output_paths.items()}}


def pod_names(outputs: Iterable[str]) -> frozenset[str]:
    return frozenset(pod_vars(pod_name="", node_name="", retries=0, output_paths=dict.fromkeys(outputs, "")))


def item_vars(item: Any) -> dict[str, str]:
    """{{item}} and {{item.<key>}} for one item of withItems/withParam (operator.go, processItem)."""
    out = {"item": argo_string(item)}
    if isinstance(item, dict):
        out.update({f"item.{k}": argo_string(v) for k, v in item.items()})
    return out


def last_retry_vars(exit_code: int | None, phase: str, duration: float, message: str) -> dict[str, str]:
    """What retryStrategy.expression reads of the attempt that just ended."""
    return {"lastRetry.exitCode": str(-1 if exit_code is None else exit_code), "lastRetry.status": phase,
            "lastRetry.duration": str(int(duration)), "lastRetry.message": message}


LAST_RETRY_NAMES = frozenset(last_retry_vars(None, "", 0.0, ""))


# -- the tasks and steps that ran before ------------------------------------------------------

def node_vars(prefix: str, name: str, outcome: Outcome, *, leaf: bool) -> dict[str, str]:
    """`tasks.<name>.*` or `steps.<name>.*` once that node is done (operator.go, buildLocalScope).

    `leaf`: the node called a script or container template, the only kind with a result.
    """
    base = f"{prefix}.{name}"
    out = {f"{base}.status": outcome.phase, f"{base}.id": outcome.node_id,
           f"{base}.startedAt": outcome.started, f"{base}.finishedAt": outcome.finished}
    if outcome.children is not None:
        return {**out, **aggregated_outputs(base, outcome.children, leaf=leaf)}
    out.update({f"{base}.outputs.parameters.{k}": v for k, v in outcome.outputs.items()})
    if outcome.result is not None:
        out[f"{base}.outputs.result"] = outcome.result
    if outcome.exit_code is not None:
        out[f"{base}.exitCode"] = str(outcome.exit_code)
    return out


def node_names(prefix: str, name: str, target: Mapping[str, Any] | None, *, expanded: bool) -> list[str]:
    """The names node_vars() can give for a call of `target`: those of a node that produced everything."""
    if target is None:
        return list(node_vars(prefix, name, Outcome(""), leaf=False))
    leaf = is_leaf(target)
    declared = [p.get("name") for p in (target.get("outputs") or {}).get("parameters") or [] if isinstance(p, dict)]
    full = Outcome(SUCCEEDED, outputs=dict.fromkeys(map(str, declared), ""), result="" if leaf else None,
                   exit_code=0 if leaf else None)
    return list(node_vars(prefix, name, Outcome("", children=(full,)) if expanded else full, leaf=leaf))


def aggregated_outputs(base: str, children: Iterable[Outcome], *, leaf: bool) -> dict[str, str]:
    """A fanned-out node's outputs (operator.go, processAggregateNodeOutputs): of the items that
    succeeded, in item order, `outputs.parameters` as a list of maps, each `outputs.parameters.NAME`
    as the list of that parameter's values (kept as JSON when every value is a JSON map or list,
    else strings: aggregatedJSONValueList), and a leaf's `outputs.result` as a list."""
    succeeded = [c for c in children if c.phase == SUCCEEDED]
    by_name: dict[str, list[str]] = {}
    for child in succeeded:
        for name, value in child.outputs.items():
            by_name.setdefault(name, []).append(value)
    out = {f"{base}.outputs.parameters": to_json([dict(sorted(c.outputs.items())) for c in succeeded if c.outputs])}
    out.update({f"{base}.outputs.parameters.{name}": to_json(_json_values(values)) for name, values in by_name.items()})
    if leaf:
        out[f"{base}.outputs.result"] = to_json([_json_or_string(c.result) for c in succeeded if c.result is not None])
    return out


def _json_values(values: list[str]) -> list[Any]:
    """The values parsed when every one is a JSON map or list; else the strings (tryJSONUnmarshal)."""
    parsed = []
    for value in values:
        try:
            item = json.loads(value)
        except ValueError:
            return values
        if not isinstance(item, (dict, list)):
            return values
        parsed.append(item)
    return parsed


def _json_or_string(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text

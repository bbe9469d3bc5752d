"""A node's outcome: how a task, step or template call ended, as the nodes after it see it.

Argo's NodeStatus, less what only a cluster keeps; shared by every scheduler (DAG, steps, fan-out)
so that they agree on what "failed" and a task result mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from mlferry.engine.runs import ERROR, FAILED, OMITTED, SKIPPED, SUCCEEDED


class NodeError(Exception):
    """A node cannot run: it ends in phase Error with this message."""


@dataclass(frozen=True)
class Outcome:
    """How a node ended, and what it offers to the nodes after it."""

    phase: str
    message: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)
    result: str | None = None
    exit_code: int | None = None
    children: tuple["Outcome", ...] | None = None  # the items of a fanned-out task, in order
    started: str = ""
    finished: str = ""
    node_id: str = ""


def task_results(outcome: Outcome) -> frozenset[str]:
    """The task results a `depends` expression can test (dag.go, evaluateDependsLogic)."""
    names = {SUCCEEDED: "Succeeded", FAILED: "Failed", ERROR: "Errored", SKIPPED: "Skipped", OMITTED: "Omitted"}
    out = {names[outcome.phase]}
    if outcome.children:
        if any(c.phase == SUCCEEDED for c in outcome.children):
            out.add("AnySucceeded")
        if all(c.phase == FAILED for c in outcome.children):
            out.add("AllFailed")
    return frozenset(out)


def group_outcome(children: list[Outcome]) -> Outcome:
    """A fanned-out task fails as its first failed child does."""
    failed = next((c for c in children if c.phase in (FAILED, ERROR)), None)
    return Outcome(failed.phase if failed else SUCCEEDED, failed.message if failed else "", children=tuple(children))

"""What DAG tasks and steps share: calling a template, once or fanned out, with at most
`parallelism` children at once.

A call's `arguments`, `when`, `withItems` and `withParam` are resolved in the caller's scope; a
`when` that is false skips the node, a tag nothing resolves fails it (Error), and the rest run in
threads of the run (engine.executor) and are collected as they end.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import replace
from queue import Queue
from typing import TYPE_CHECKING, Any, Callable, Mapping

from mlferry.engine.expressions import ExpressionError, argo_string, evaluate_when, substitute, substitute_all, tags
from mlferry.engine.fanout import Group, item_label, items
from mlferry.engine.fields import is_leaf
from mlferry.engine.nodes import NodeError, Outcome
from mlferry.engine.parameters import skipped_outputs, template_outputs
from mlferry.engine.runs import ERROR, RUNNING, SKIPPED, SUCCEEDED, now
from mlferry.engine.scope import item_vars, node_vars

if TYPE_CHECKING:
    from mlferry.engine.executor import Run

log = logging.getLogger(__name__)


class Pool:
    """Runs children in threads, at most `limit` at once (template parallelism).

    Only the thread of the DAG or steps node that owns the pool calls it.
    """

    def __init__(self, run: "Run", limit: int | None):
        self.ctx, self.limit = run, limit
        self.waiting: deque[tuple[Any, Callable[[], Outcome]]] = deque()
        self.running = 0
        self.done: Queue[tuple[Any, Outcome]] = Queue()

    def submit(self, key: Any, job: Callable[[], Outcome]) -> None:
        self.waiting.append((key, job))
        self._start()

    @property
    def busy(self) -> bool:
        return self.running > 0 or (bool(self.waiting) and not self.ctx.stop.is_set())

    def next(self) -> tuple[Any, Outcome]:
        key, outcome = self.done.get()
        self.running -= 1
        self._start()
        return key, outcome

    def _start(self) -> None:
        while self.waiting and not self.ctx.stop.is_set() and (self.limit is None or self.running < self.limit):
            key, job = self.waiting.popleft()
            self.running += 1
            self.ctx.spawn(lambda key=key, job=job: self.done.put((key, _guarded(job))))


def _guarded(job: Callable[[], Outcome]) -> Outcome:
    try:
        return job()
    except Exception as err:  # a bug here must end the node, not hang its parent
        log.exception("internal error")
        return Outcome(ERROR, f"internal error: {err!r}")


class Calls:
    """The tasks or steps of one DAG or steps node, turned into nodes to run."""

    def __init__(self, run: "Run", name: str, t: Mapping[str, Any], scope: Mapping[str, str]):
        self.ctx, self.name, self.template, self.scope = run, name, t, dict(scope)
        self.records = run.records
        limit = t.get("parallelism")
        self.pool = Pool(run, int(substitute(str(limit), scope)) if limit is not None else None)
        self.groups: dict[str, Group] = {}

    def child(self, call_name: str) -> str:
        return f"{self.name}.{call_name}" if self.name else call_name

    def vars_of(self, prefix: str, call: Mapping[str, Any], outcome: Outcome) -> dict[str, str]:
        """`tasks.<name>.*` or `steps.<name>.*` of a call that is done."""
        leaf = is_leaf(self.ctx.plan.templates[call["template"]])
        return node_vars(prefix, call["name"], outcome, leaf=leaf)

    def start(self, call: Mapping[str, Any], scope: Mapping[str, str]) -> Outcome | None:
        """Start a task or step; return its outcome if it is decided without running anything."""
        name = self.child(call["name"])
        fields_ = {k: call[k] for k in ("arguments", "when", "withItems", "withParam") if k in call}
        try:
            resolved = substitute_all(fields_, scope)
            values = items(resolved)
        except (NodeError, ExpressionError) as err:
            return self.records.settled(name, call["template"], Outcome(ERROR, str(err)))
        if values is None:
            group = Group(name, False, [None])
            self.groups[call["name"]] = group
            self.prepare(call, name, resolved, group, 0)
        elif not values:
            return self.records.settled(name, call["template"], Outcome(SKIPPED, "Skipped, empty params",
                                                                        self.skipped_outputs(call)))
        else:
            group = Group(name, True, [None] * len(values))
            group.record = self.records.open(name, call["template"], "TaskGroup")
            self.records.set_phase(group.record, RUNNING)
            self.groups[call["name"]] = group
            for i, item in enumerate(values):
                self.prepare(call, f"{name}({i}:{item_label(item)})", resolved, group, i, item_vars(item))
        return self.finish(call["name"]) if group.complete else None

    def prepare(self, call: Mapping[str, Any], name: str, resolved: Mapping[str, Any], group: Group, i: int,
                item: Mapping[str, str] | None = None) -> None:
        """Decide one node: Skipped by its `when`, Error if unresolved, else queued to run."""
        try:
            if item is not None:
                resolved = substitute_all({k: v for k, v in resolved.items() if k in ("arguments", "when")}, item)
            if "when" in resolved and not evaluate_when(_resolved(str(resolved["when"]), "when")):
                group.outcomes[i] = self.records.settled(name, call["template"], Outcome(
                    SKIPPED, f"when '{resolved['when']}' evaluated false", self.skipped_outputs(call)))
                return
            args = {p["name"]: _resolved(argo_string(p["value"]), f"arguments.parameters.{p['name']}")
                    for p in (resolved.get("arguments") or {}).get("parameters") or []}
        except (NodeError, ExpressionError) as err:
            group.outcomes[i] = self.records.settled(name, call["template"], Outcome(ERROR, str(err)))
            return
        self.pool.submit((call["name"], i), lambda: self.ctx.node(name, call["template"], args))

    def skipped_outputs(self, call: Mapping[str, Any]) -> dict[str, str]:
        return skipped_outputs(self.ctx.plan.templates[call["template"]])

    def collect(self) -> str | None:
        """Wait for one child; return the name of its task or step if that is now complete."""
        (call_name, i), outcome = self.pool.next()
        group = self.groups[call_name]
        group.outcomes[i] = outcome
        return call_name if group.complete else None

    def finish(self, call_name: str) -> Outcome:
        group = self.groups[call_name]
        outcome = group.outcome()
        if group.record is not None:
            outcome = replace(outcome, started=group.record.started or now(), finished=now(),
                              node_id=self.records.node_id(group.name))
            self.records.close(group.record, outcome, time.monotonic() - group.clock)
        return outcome

    def succeeded(self, scope: Mapping[str, str]) -> Outcome:
        """The template's end once its children succeeded: its outputs, or Error if one is missing."""
        try:
            return Outcome(SUCCEEDED, outputs=template_outputs(self.template, scope))
        except (NodeError, ExpressionError) as err:
            return Outcome(ERROR, str(err))


def _resolved(text: str, what: str) -> str:
    """Argo fails a node whose arguments still hold a variable nothing could resolve."""
    left = tags(text)
    if left:
        raise NodeError(f"{what}: failed to resolve {{{{{left[0]}}}}}")
    return text

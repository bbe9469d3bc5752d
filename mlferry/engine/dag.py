"""DAG templates: tasks start when their `depends` is decided, and the DAG's phase comes from its
leaf tasks' branches, as Argo's dag.go decides them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from mlferry.engine.calls import Calls
from mlferry.engine.expressions import depends_text, parse_depends
from mlferry.engine.nodes import Outcome, task_results
from mlferry.engine.runs import ERROR, FAILED, OMITTED, SUCCEEDED
from mlferry.engine.scope import TASKS

if TYPE_CHECKING:
    from mlferry.engine.executor import Run


class Dag(Calls):
    def __init__(self, run: "Run", name: str, t: Mapping[str, Any], scope: Mapping[str, str]):
        super().__init__(run, name, t, scope)
        self.tasks = {task["name"]: task for task in t["dag"]["tasks"]}
        self.depends = {name: parse_depends(depends_text(task), self.continue_on) for name, task in self.tasks.items()}
        self.done: dict[str, Outcome] = {}

    def continue_on(self, task: str) -> list[str]:
        """With continueOn, a bare dependency name also accepts Failed or Errored (common/ancestry.go)."""
        flags = self.tasks[task].get("continueOn") or {}
        return [r for key, r in (("failed", "Failed"), ("error", "Errored")) if flags.get(key)]

    def run(self) -> Outcome:
        pending = list(self.tasks)
        while True:
            pending = self.start_ready(pending)
            if not self.pool.busy:
                break
            if (finished := self.collect()) is not None:
                self.done[finished] = self.finish(finished)
        if pending or len(self.done) < len(self.tasks):
            return Outcome(FAILED, self.ctx.stop.reason or "tasks could not start")
        return self.assess()

    def start_ready(self, pending: list[str]) -> list[str]:
        """Start every task whose dependencies are done, until no more can start now."""
        progressed = True
        while progressed and not self.ctx.stop.is_set():
            progressed = False
            for name in list(pending):
                if all(d in self.done for d in self.depends[name].tasks):
                    pending.remove(name)
                    progressed = True
                    if (outcome := self.start_task(name)) is not None:
                        self.done[name] = outcome
        return pending

    def start_task(self, name: str) -> Outcome | None:
        task = self.tasks[name]
        depends = self.depends[name]
        if depends.tasks and not depends.predicate({d: task_results(self.done[d]) for d in depends.tasks}):
            return self.records.settled(self.child(name), task["template"],
                                        Outcome(OMITTED, "omitted: depends condition not met"))
        return self.start(task, self.scope_now())

    def scope_now(self) -> dict[str, str]:
        """The DAG's scope with `tasks.<name>.*` of every task done so far."""
        scope = dict(self.scope)
        for done_name, outcome in self.done.items():
            scope.update(self.vars_of(TASKS, self.tasks[done_name], outcome))
        return scope

    def assess(self) -> Outcome:
        """The DAG's phase from its leaf tasks' branches (dag.go, assessDAGPhase).

        A Skipped or Omitted task carries the phase of the branch above it, so a task omitted
        because its dependency failed counts as failed, unless a task that did run stands between.
        """
        deps = {name: self.depends[name].tasks for name in self.tasks}
        branch: dict[str, set[str]] = {}

        def phases(name: str) -> set[str]:
            if name not in branch:
                phase = self.done[name].phase
                branch[name] = {phase} if phase in (SUCCEEDED, FAILED, ERROR) else \
                    set().union(*(phases(d) for d in deps[name])) or {SUCCEEDED}
            return branch[name]

        leaves = [n for n in self.tasks if not any(n in d for d in deps.values())]
        for leaf in leaves:
            failed = next((p for p in (FAILED, ERROR) if p in phases(leaf)), None)
            if failed and not (failed == FAILED and "Failed" in self.continue_on(leaf)) \
                    and not (failed == ERROR and "Errored" in self.continue_on(leaf)):
                culprit = next((n for n in self.tasks if self.done[n].phase == failed), leaf)
                return Outcome(failed, f"child '{self.child(culprit)}' {failed.lower()}")
        return self.succeeded(self.scope_now())

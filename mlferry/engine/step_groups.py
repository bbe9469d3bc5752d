"""Steps templates: groups of steps run one after the other, the steps of a group in parallel;
a failed step (unless continueOn) ends the template after its group (steps.go)."""

from __future__ import annotations

from mlferry.engine.calls import Calls
from mlferry.engine.nodes import Outcome
from mlferry.engine.runs import ERROR, FAILED
from mlferry.engine.scope import STEPS


class Steps(Calls):
    def run(self) -> Outcome:
        scope = dict(self.scope)
        for group in self.template["steps"]:
            if self.ctx.stop.is_set():
                return Outcome(FAILED, self.ctx.stop.reason)
            done = {step["name"]: o for step in group if (o := self.start(step, scope)) is not None}
            while self.pool.busy:
                if (finished := self.collect()) is not None:
                    done[finished] = self.finish(finished)
            if len(done) < len(group):
                return Outcome(FAILED, self.ctx.stop.reason or "steps could not start")
            for step in group:
                scope.update(self.vars_of(STEPS, step, done[step["name"]]))
                phase = done[step["name"]].phase
                flags = step.get("continueOn") or {}
                if (phase == FAILED and not flags.get("failed")) or (phase == ERROR and not flags.get("error")):
                    return Outcome(FAILED, f"child '{self.child(step['name'])}' failed")
        return self.succeeded(scope)

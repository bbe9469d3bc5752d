"""`mlferry promote`: one run of the `mlferry-promote` WorkflowTemplate, on the local executor.

The flow itself (resolve → publish ∥ render → commit → report) is defined once, in
workflows/promote.py; this module only submits it and reads the run back for people.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlferry.local import LocalArgo
from mlferry.steps.event_filter import TEMPLATE_START
from mlferry.steps.outcome import node_line, readable_failure
from mlferry.engine import NodeEvent, RunResult

TEMPLATE = "workflowtemplate/mlferry-promote"
ROLLBACK_TEMPLATE = "workflowtemplate/mlferry-rollback"


class PromotionFailed(RuntimeError):
    """The workflow ran and failed; the message is the failing step's own error line."""


@dataclass(frozen=True)
class PromotionRequest:
    model: str
    env: str
    version: str = ""
    alias: str = ""
    stage: str = ""
    trigger: str = "manual"
    hold: str = ""  # a reason: deploy the version and hold it there
    release: bool = False  # end the environment's hold
    force: bool = False  # deploy another environment's alias here (as a hold)

    def parameters(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version, "alias": self.alias, "stage": self.stage,
                "env": self.env, "trigger": self.trigger, "hold": self.hold,
                "release": str(self.release).lower(), "force": str(self.force).lower()}


@dataclass(frozen=True)
class PromotionResult:
    run: RunResult

    def output(self, task: str, name: str) -> str:
        for record in self.run.tasks:
            if record.name == task:
                return record.outputs.get(name, "")
        return ""

    @property
    def uri(self) -> str:
        return self.run.outputs.get("uri", "")

    @property
    def commit(self) -> str:
        return self.run.outputs.get("commit", "")

    @property
    def folder(self) -> str:
        return self.run.outputs.get("folder", "")

    @property
    def changed(self) -> bool:
        return self.run.outputs.get("changed") == "true"

    def as_json(self) -> dict:
        """What `summary` says, for scripts, with each step's time."""
        out = lambda key: self.output("publish", key)  # noqa: E731
        return {
            "model": self.output("resolve", "name"), "version": self.output("resolve", "version"),
            "env": self.output("resolve", "env"), "run": self.run.run_id, "duration": self.run.duration,
            "uri": self.uri, "folder": self.folder, "commit": self.commit, "changed": self.changed,
            "repo": self.output("commit", "repo"), "branch": self.output("commit", "branch"),
            "artifacts": {key: int(out(key) or 0) for key in ("files", "uploaded", "skipped", "bytes_uploaded")},
            "steps": [{"name": t.name, "phase": t.phase, "duration": t.duration}
                      for t in self.run.tasks if t.type == "Pod"],
        }

    def summary(self) -> str:
        name, version, env = (self.output("resolve", k) for k in ("name", "version", "env"))
        took = f"in {self.run.duration or 0:.1f}s (run {self.run.run_id})"
        if self.output("resolve", "action") == "retire":
            done = (f"removed {name} from {env}" if self.output("retire", "changed") == "true"
                    else f"nothing to remove: {name} has no folder in {env} (or it is held)")
            return f"{done} {took}: {self.output('resolve', 'why')}"
        moved = self.output("rollback", "alias")
        if moved:
            took += (f"; @{moved} moved back from v{self.output('rollback', 'bad')} "
                     f"to v{self.output('rollback', 'to')}")
        overtaken = self.output("commit", "overtaken")
        if overtaken:
            return (f"superseded: the rule selects {overtaken} in {env} now; v{version} of {name} was not "
                    f"deployed (the run of that change deploys it) {took}")
        blocked = self.output("commit", "blocked")
        if blocked:
            return (f"held: {env} stays at v{self.output('commit', 'previous')} of {name} ({blocked}); v{version} "
                    f"was not deployed; `mlferry release {name} --env {env}` ends the hold {took}")
        out = lambda key: self.output("publish", key)  # noqa: E731
        change = f"commit {self.commit[:12]}" if self.changed else f"nothing to change (head {self.commit[:12]})"
        hold = self.output("resolve", "hold")
        verified = self.output("verify", "outcome")
        return "\n".join([
            f"promoted {name} v{version} to {env} {took}: {self.output('resolve', 'why')}",
            *([f"  held       until `mlferry release {name} --env {env}`: {hold}"] if hold else []),
            f"  artifacts  {self.uri}  ({out('uploaded')} uploaded, {out('skipped')} already there, "
            f"{out('files')} files, {out('bytes_uploaded')} bytes sent)",
            f"  gitops     {self.output('commit', 'repo')} {self.output('commit', 'branch')}:{self.folder}/  {change}",
            *([f"  verified   {verified}: {self.output('verify', 'reason')}"]
              if verified and verified != "skipped" else []),
        ])


def promote(req: PromotionRequest, *, runs_root: str | Path, config: str | None = None,
            on_event: Callable[[NodeEvent], None] | None = None) -> PromotionResult:
    return run_promotion(TEMPLATE, req.parameters(), f"promotion of {req.model} to {req.env}",
                         runs_root=runs_root, config=config, on_event=on_event)


def rollback(model: str, env: str, *, to: str = "", reason: str = "", runs_root: str | Path,
             config: str | None = None, on_event: Callable[[NodeEvent], None] | None = None) -> PromotionResult:
    """`mlferry-rollback`: the alias back to `to` (default: the version deployed before), then deployed."""
    return run_promotion(ROLLBACK_TEMPLATE, {"model": model, "env": env, "to": to, "reason": reason},
                         f"rollback of {model} in {env}", runs_root=runs_root, config=config, on_event=on_event)


def run_promotion(template: str, parameters: dict[str, str], what: str, *, runs_root: str | Path,
                  config: str | None, on_event: Callable[[NodeEvent], None] | None) -> PromotionResult:
    for name, value in parameters.items():
        if TEMPLATE_START in value:  # Argo would substitute it as a template variable, here as on a cluster
            raise ValueError(f"{name} {value[:80]!r} holds {TEMPLATE_START!r}, which Argo reads as a template variable in a "
                             "workflow parameter: " + ("rename the registered model" if name == "model"
                                                       else "leave it out"))
    local = LocalArgo.from_environment(config, runs_root)
    run = local.submit(template, parameters, on_event=on_event)
    if run.phase != "Succeeded":
        raise PromotionFailed(f"{what} failed: {failure_line(run)} (details: mlferry runs show {run.run_id})")
    return PromotionResult(run)


def failure_line(run: RunResult) -> str:
    """The failing step's own one-line error, not its whole stderr."""
    failed = [t for t in run.tasks if t.phase in ("Failed", "Error") and t.type == "Pod"]
    if not failed:
        return readable_failure(run.message) or run.phase
    return f"{failed[0].name}: {node_line(failed[0].message, failed[0].phase, failed[0].attempts) or failed[0].phase}"


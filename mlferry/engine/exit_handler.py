"""spec.onExit: the template that runs once the workflow has ended, whatever happened."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from mlferry.engine.nodes import Outcome
from mlferry.engine.pods import Stop
from mlferry.engine.runs import SUCCEEDED

if TYPE_CHECKING:
    from mlferry.engine.executor import Run


def run_exit_handler(run: "Run", outcome: Outcome) -> Outcome:
    """Run spec.onExit even past the workflow's deadline (as in Argo); it sees `workflow.status`
    and `workflow.failures`, and if it fails, so does the workflow."""
    on_exit = run.plan.spec.get("onExit")
    if on_exit is None:
        return outcome
    run.stop = Stop()  # the workflow's deadline or stop does not stop its exit handler
    run.globals["workflow.status"] = outcome.phase
    # The exit hook is called with the workflow's arguments (WorkflowSpec.GetExitHook(args)).
    exit_outcome = run.node("onExit", on_exit, run.arguments)
    if outcome.phase == SUCCEEDED and exit_outcome.phase != SUCCEEDED:
        return replace(exit_outcome, outputs=outcome.outputs)
    return outcome

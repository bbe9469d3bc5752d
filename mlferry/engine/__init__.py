"""The local Argo engine: runs generated Argo YAML as local processes, one Argo concept per module.

It knows Argo, not promotions: nothing here imports the steps, the Hera definitions or the CLI.

    plan = load("generated/mlferry-promote.yaml")
    result = run(plan, {"model": "wine"}, run_dir=new_run_dir(".mlferry/runs", plan.generate_name))

Loading: loader (documents, WorkflowTemplate references), fields (what is implemented),
validation (references and variables), scope (which variables exist where).
Running: executor (the run and its nodes), dag, step_groups, calls and fanout (tasks and steps),
parameters, containers and pods (a leaf template as a process), retries, synchronization,
exit_handler, submission (arguments, ConfigMaps and Secrets), records and runs (what a run did).
expressions: Argo's tag, `when`, `depends` and expression languages. schema: strict validation of
Argo objects against Hera's models (imported on its own: it loads jsonschema and Hera).
"""

from mlferry.engine.executor import run
from mlferry.engine.loader import Plan, PlanError, WorkflowParameter, load
from mlferry.engine.retries import next_retry
from mlferry.engine.runs import NodeEvent, RunResult, TaskRecord, list_runs, load_run, new_run_dir
from mlferry.engine.submission import ArgumentError, Cluster

__all__ = ["ArgumentError", "Cluster", "NodeEvent", "Plan", "PlanError", "RunResult", "TaskRecord",
           "WorkflowParameter", "list_runs", "load", "load_run", "new_run_dir", "next_retry", "run"]

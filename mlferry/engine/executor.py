"""Run a WorkflowTemplate, Workflow or CronWorkflow on this machine, as Argo would on a cluster.

    plan = load("generated/mlferry-promote.yaml")
    result = run(plan, {"model": "wine", "version": "3", "env": "staging"},
                 run_dir=new_run_dir(".mlferry/runs", plan.generate_name), on_event=print)

This module ties the run together: a node is a template called with arguments, and it runs as a
DAG (engine.dag), steps (engine.step_groups) or a process (engine.containers, engine.pods), with
its locks (engine.synchronization) and retries (engine.retries); then comes the exit handler
(engine.exit_handler). Parameters, ConfigMaps and Secrets are checked before anything runs
(engine.submission); what is not implemented was refused when the plan was loaded (engine.loader);
each run leaves a record (engine.records, engine.runs).

Threads: each running task or step has a thread; a DAG or steps template waits in its own thread
for its children, so nesting needs no pool sizing. `on_event` is called from those threads, one
call at a time.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from mlferry.engine.containers import Machine, build_pod
from mlferry.engine.dag import Dag
from mlferry.engine.exit_handler import run_exit_handler
from mlferry.engine.expressions import ExpressionError, substitute, substitute_all
from mlferry.engine.fields import is_leaf, node_type
from mlferry.engine.loader import Plan
from mlferry.engine.nodes import NodeError, Outcome
from mlferry.engine.parameters import template_inputs
from mlferry.engine.pods import Stop, pod_deadline, run_pod
from mlferry.engine.records import Recorder
from mlferry.engine.retries import next_retry
from mlferry.engine.runs import ERROR, FAILED, PENDING, RUNNING, SUCCEEDED, NodeEvent, RunResult, TaskRecord, now
from mlferry.engine.scope import input_vars, run_state_vars, workflow_vars
from mlferry.engine.step_groups import Steps
from mlferry.engine.submission import Cluster, check_environment, secret_keys, workflow_arguments
from mlferry.engine.synchronization import Interrupted, Lock, default_lock_dir, holding, locks_for
from mlferry.engine.warm import WarmServer, entry_modules, runner_call, warm_enabled

__all__ = ["Run", "run"]

POLL_INTERRUPT = 0.1  # seconds between looks at a run's `interrupt` event
RUN_SLOTS_KEY = "local/Runs"  # the lock of `max_runs`: outside Argo's `<namespace>/<kind>/<name>` keys

log = logging.getLogger(__name__)


def run(plan: Plan, parameters: Mapping[str, str] | None = None, *, run_dir: str | Path,
        env: Mapping[str, str] | None = None, on_event: Callable[[NodeEvent], None] | None = None,
        cluster: Cluster | None = None, cwd: str | Path | None = None, python: str = sys.executable,
        lock_dir: str | Path | None = None, namespace: str | None = None, backoff_scale: float = 1.0,
        kill_grace: float = 2.0, interrupt: threading.Event | None = None,
        max_runs: int | None = None, retry_budget: float | None = None,
        warm: WarmServer | None = None) -> RunResult:
    """Run `plan` to its end and return what happened; run.json in `run_dir` says the same.

    `run_dir`'s name is the workflow's name (`{{workflow.name}}`); `env` is the environment every
    process starts from (default: this process's); `cluster` answers configMapKeyRef/secretKeyRef
    (default: the environment, see Cluster.from_environment); processes run in `cwd` (default:
    the current directory, the repository root for `steps.*` entrypoints); `lock_dir` holds the
    mutex and semaphore files shared by runs on this machine. Raises ArgumentError, before
    anything runs, when a parameter or a ConfigMap/Secret key is missing.

    `max_runs`, as the Argo controller's `parallelism`, bounds the runs that go on at once on this machine
    (those sharing `lock_dir`, in any process): a run past it waits, before its first step, for one of
    them to end. Every run is a few Python processes at a time, so thirty at once on two cores would
    only compete for them; the steps of the runs in progress (a commit holding the GitOps mutex, above
    all) then get the machine.

    `retry_budget` (seconds, local only) bounds how long a node keeps retrying after its first attempt
    started: no retry starts that would end past it (if it lasts as long as the last attempt), on top
    of what retryStrategy allows. A laptop does not wait
    minutes for a server that refuses connections; the templates keep their cluster backoff.

    `warm`: a warm server (engine.warm) that outlives the run, shared by the runs of a long-lived
    process; without it the run starts its own for its Hera runner steps, and ends it.

    Ctrl-C (or SIGTERM, in the main thread) stops the run: its processes are killed, the record says
    Failed "interrupted", and KeyboardInterrupt is raised. A run in another thread is stopped the same
    way, with the same outcome, by setting `interrupt`.
    """
    base_env = dict(os.environ if env is None else env)
    cluster = cluster or Cluster.from_environment(base_env)
    # A pod sees a Secret's value only where its template asks for it (env valueFrom), as on a
    # cluster; inheriting it from this shell would hide a template that forgot to.
    hidden = secret_keys(plan.spec)  # once: walking the spec per variable cost a quarter of a second
    base_env = {k: v for k, v in base_env.items() if k not in hidden}
    namespace = namespace or plan.namespace or "default"
    values = workflow_arguments(plan, parameters or {}, cluster, namespace)
    check_environment(plan, cluster, namespace)
    machine = Machine(base_env, cluster, namespace, Path(cwd or os.getcwd()), python)
    context = Run(plan, values, Path(run_dir), machine, on_event, lock_dir=Path(lock_dir or default_lock_dir()),
                  backoff_scale=backoff_scale, kill_grace=kill_grace, interrupt=interrupt, max_runs=max_runs,
                  retry_budget=retry_budget, warm=warm)
    with _interrupted_by_sigterm():
        return context.execute()


@contextmanager
def _interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does, so that no step process outlives the executor."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """One run of a plan: its scope, its threads, its stop, and how each node runs."""

    def __init__(self, plan: Plan, values: dict[str, str], run_dir: Path, machine: Machine,
                 on_event: Callable[[NodeEvent], None] | None, *, lock_dir: Path, backoff_scale: float,
                 kill_grace: float, interrupt: threading.Event | None = None, max_runs: int | None = None,
                 retry_budget: float | None = None, warm: WarmServer | None = None):
        self.plan, self.run_dir, self.machine, self.namespace = plan, run_dir, machine, machine.namespace
        self.arguments = values  # the workflow's parameters: the entrypoint's and onExit's arguments
        self.retry_budget = retry_budget
        self.interrupt, self.max_runs = interrupt, max_runs
        self.lock_dir, self.backoff_scale, self.kill_grace = lock_dir, backoff_scale, kill_grace
        self.run_id = run_dir.name
        self.stop = Stop()
        self.stopped = ""  # why the main part of the run was stopped, if it was
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        result = RunResult(self.run_id, plan.name, plan.kind, RUNNING, values, started=now(), run_dir=str(run_dir))
        self.records = Recorder(result, run_dir, on_event)
        self.globals = workflow_vars(name=self.run_id, namespace=self.namespace, uid=str(uuid.uuid4()),
                                     created=result.started[:19] + "Z", status=RUNNING, entrypoint=plan.entrypoint,
                                     parameters=values, labels=plan.labels, annotations=plan.annotations)
        limit = plan.spec.get("parallelism")
        self.pod_slots = threading.BoundedSemaphore(int(limit)) if limit else None
        self.shared_warm = warm  # owned by the caller
        self.warm: WarmServer | None = None  # this run's own, started by its first Hera runner pod

    def scope(self) -> dict[str, str]:
        """Global variables now: status, duration and failures change as the run goes."""
        return {**self.globals, **run_state_vars(time.monotonic() - self.records.started, self.records.failures)}

    # the whole run
    def execute(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.records.save()
        try:
            return self._execute()
        finally:
            if self.warm is not None:
                self.warm.close()

    def _execute(self) -> RunResult:
        try:
            with self.interruptible(), self.run_slot():
                with self.workflow_deadline():
                    outcome = self.entrypoint()
                self.raise_if_interrupted()
                self.stopped = self.stop.reason
                outcome = run_exit_handler(self, outcome)
                self.raise_if_interrupted()
        except KeyboardInterrupt:
            self.stop.stop("interrupted")
            self.join_threads()
            self.stopped = self.stopped or "interrupted"
            self.records.finish(Outcome(FAILED, "interrupted"), self.stopped)
            raise
        return self.records.finish(outcome, self.stopped)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """While the run lasts, `interrupt` stops whatever runs now (the exit handler has its own Stop)."""
        if self.interrupt is None:
            yield
            return
        ended = threading.Event()

        def watch() -> None:
            while not ended.is_set():
                if self.interrupt.wait(POLL_INTERRUPT):
                    self.stop.stop("interrupted")
                    return

        watcher = threading.Thread(target=watch, name=f"{self.run_id}-interrupt", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            ended.set()
            watcher.join()

    @contextmanager
    def run_slot(self) -> Iterator[None]:
        """One of the `max_runs` slots of this machine, held until the run (exit handler included) ends."""
        if not self.max_runs:
            yield
            return
        slots = Lock(RUN_SLOTS_KEY, max(1, int(self.max_runs)))
        try:
            with holding([slots], self.lock_dir, stop=self.stop, waiting=lambda _lock: self.records.emit(
                    NodeEvent(self.run_id, PENDING, self.plan.entrypoint,
                              message=f"waiting for one of the {slots.limit} runs at once on this machine"))):
                yield
        except Interrupted:  # only an interrupt stops a run before its deadline starts counting
            raise KeyboardInterrupt from None

    def raise_if_interrupted(self) -> None:
        if self.interrupt is not None and self.interrupt.is_set():
            raise KeyboardInterrupt  # the same ending as Ctrl-C: see execute()

    @contextmanager
    def workflow_deadline(self) -> Iterator[None]:
        seconds = self.plan.spec.get("activeDeadlineSeconds")
        if seconds is None:
            yield
            return
        seconds = int(substitute(str(seconds), self.globals))
        timer = threading.Timer(seconds, self.stop.stop, [f"deadline exceeded (workflow activeDeadlineSeconds {seconds})"])
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def entrypoint(self) -> Outcome:
        try:
            locks = self.locks(self.plan.spec.get("synchronization"), self.globals)
            with holding(locks, self.lock_dir, stop=self.stop, waiting=lambda lock: self.records.emit(
                    NodeEvent(self.run_id, PENDING, self.plan.entrypoint, message=f"waiting for lock {lock.key}"))):
                # Argo calls the entrypoint with the workflow's arguments (operator.go,
                # executeTemplate(…, woc.execWf.Spec.Arguments, …)): its inputs take them by name.
                return self.node("", self.plan.entrypoint, self.arguments)
        except (Interrupted, NodeError) as err:
            return Outcome(FAILED if isinstance(err, Interrupted) else ERROR, self.stop.reason or str(err))

    def locks(self, sync: Mapping[str, Any] | None, scope: Mapping[str, str]) -> list[Lock]:
        return locks_for(sync, scope, self.namespace, self.machine.cluster)

    def join_threads(self) -> None:
        for thread in list(self.threads):
            thread.join(timeout=self.kill_grace + 5)

    def spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    # one node: a template called with arguments
    def node(self, name: str, template_name: str, arguments: Mapping[str, str]) -> Outcome:
        t = self.plan.templates[template_name]
        leaf = is_leaf(t)
        record = self.records.open(name or template_name, template_name, node_type(t)) if name or leaf else None
        started, clock, finished = now(), time.monotonic(), None
        try:
            inputs = template_inputs(t, arguments, self.globals, self.machine.cluster, self.namespace)
            scope = {**self.scope(), **input_vars(inputs)}
            locks = self.locks(t.get("synchronization"), scope)
            with holding(locks, self.lock_dir, stop=self.stop,
                         waiting=lambda lock: self.records.set_phase(record, PENDING, f"waiting for lock {lock.key}")):
                if not leaf:
                    self.records.set_phase(record, RUNNING)
                outcome = self.retrying(name, t, scope, record)
                # Stamped before the locks are released: the next holder's start can then never come
                # before this node's end in the records, which would show a mutex held twice at once.
                finished = now()
        except (NodeError, ExpressionError) as err:
            outcome = Outcome(ERROR, str(err))
        except Interrupted:
            outcome = Outcome(FAILED, self.stop.reason)
        outcome = replace(outcome, started=started, finished=finished or now(), node_id=self.records.node_id(name))
        self.records.close(record, outcome, time.monotonic() - clock)
        return outcome

    def retrying(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], record: TaskRecord | None) -> Outcome:
        # `retryStrategy: {}` is a strategy too: OnFailure, and no limit (the limit applies only when
        # set: operator.go, processNodeRetries).
        strategy = substitute_all(dict(t["retryStrategy"]), scope) if t.get("retryStrategy") is not None else None
        first, attempt, deadline = time.monotonic(), 0, None
        while True:
            if record is not None:
                record.attempts = attempt + 1
            clock = time.monotonic()
            outcome = self.attempt(name, t, scope, attempt, deadline, record)
            if outcome.phase == SUCCEEDED or strategy is None or self.stop.is_set():
                return outcome
            took = time.monotonic() - clock
            decision = next_retry(strategy, attempt + 1, outcome, took, first, time.monotonic(), self.backoff_scale)
            budget_end = first + self.retry_budget if self.retry_budget is not None else None
            # A retry that would end past the budget, if it lasts as long as this attempt did, is not started.
            if decision.wait is not None and budget_end is not None \
                    and time.monotonic() + decision.wait + took > budget_end:
                decision = replace(decision, wait=None,
                                   reason=f"retries stopped at the local limit of {self.retry_budget:.0f}s")
            if decision.wait is None:
                if attempt:
                    log.debug("%s: %s after %d attempts", name, decision.reason, attempt + 1)
                return outcome  # the last attempt's own words; the record counts the attempts
            self.records.set_phase(record, PENDING, outcome.message,
                                   retry=self.retry_note(strategy, attempt + 1, decision.wait, budget_end))
            if self.stop.wait(decision.wait):
                return outcome
            attempt, deadline = attempt + 1, decision.deadline

    @staticmethod
    def retry_note(strategy: Mapping[str, Any], retry: int, wait: float, budget_end: float | None) -> str:
        """"retry 2 of 3 in 4s (gives up in 21s)": which retry comes next and how long is left."""
        limit = strategy.get("limit")
        count = f"retry {retry} of {limit}" if limit is not None else f"retry {retry}"
        left = f" (gives up in {max(0.0, budget_end - time.monotonic()):.0f}s)" if budget_end is not None else ""
        return f"{count} in {wait:.0f}s{left}"

    def attempt(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], attempt: int,
                deadline: float | None, record: TaskRecord | None) -> Outcome:
        if "dag" in t:
            return Dag(self, name, t, scope).run()
        if "steps" in t:
            return Steps(self, name, t, scope).run()
        return self.pod(name or t["name"], t, scope, attempt, deadline, record)

    # a leaf template as a process
    def pod(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], attempt: int,
            retry_deadline: float | None, record: TaskRecord | None) -> Outcome:
        safe = re.sub(r"[^A-Za-z0-9._()-]+", "_", name)
        log_path = self.run_dir / "logs" / f"{safe}.log"
        pod, scope = build_pod(name, t, scope, self.machine, pod_name=f"{self.run_id}-{safe}-{attempt}",
                               node_name=f"{self.run_id}.{name}", attempt=attempt,
                               pod_dir=self.run_dir / "pods" / f"{safe}-{attempt}", log=log_path)
        if record is not None:
            record.log = str(log_path)
        if attempt:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log_file:
                log_file.write(f"--- retry {attempt} ---\n")
        with self.pod_slot():  # the pod exists from here: its deadline counts from now
            deadline, why = pod_deadline(t, scope, retry_deadline)
            self.records.set_phase(record, RUNNING)
            result = run_pod(replace(pod, deadline=deadline, deadline_message=why), self.stop,
                             kill_grace=self.kill_grace, warm=self.warm_server(pod.argv))
        return Outcome(result.phase, result.message, result.outputs, result.result, result.exit_code)

    def warm_server(self, argv: list[str]) -> WarmServer | None:
        """The run's warm server, started for the first Hera runner call (engine.warm)."""
        if not runner_call(argv, self.machine.python) or not warm_enabled(self.machine.base_env):
            return None
        if self.shared_warm is not None:
            return self.shared_warm
        with self.lock:
            if self.warm is None:
                self.warm = WarmServer(self.machine.python, str(self.machine.cwd), self.machine.base_env,
                                       preload=entry_modules(self.plan.templates.values()))
            return self.warm

    @contextmanager
    def pod_slot(self) -> Iterator[None]:
        """One of the workflow's `parallelism` slots, which counts pods."""
        if self.pod_slots is None:
            yield
            return
        while not self.pod_slots.acquire(timeout=0.05):
            if self.stop.is_set():
                raise Interrupted(self.stop.reason)
        try:
            yield
        finally:
            self.pod_slots.release()

"""Run a WorkflowTemplate, Workflow or CronWorkflow on this machine, as Argo would on a cluster.

    plan = load("generated/mlferry-promote.yaml")
    result = run(plan, {"model": "wine", "version": "3", "env": "staging"},
                 run_dir=new_run_dir(".mlferry/runs", plan.generate_name), on_event=print)

Each script or container template runs as a local process (engine.pods); DAG and steps
templates are scheduled here with Argo's rules: `depends` and its task results, `when`, fan-out
with `withItems`/`withParam`, `parallelism`, `retryStrategy` (engine.retries), deadlines,
mutexes and semaphores (engine.synchronization), template outputs and the exit handler.
Parameters, ConfigMaps and Secrets are checked before anything runs (engine.submission);
what is not implemented was refused when the plan was loaded (engine.loader); each run leaves
a record (engine.runs).

Threads: each running task or step has a thread; a DAG or steps template waits in its own thread
for its children, so nesting needs no pool sizing. `on_event` is called from those threads, one
call at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Iterator, Mapping

from mlferry.engine.expressions import (
    ExpressionError,
    Unresolved,
    evaluate_when,
    parse_depends,
    substitute,
    substitute_all,
    tags,
)
from mlferry.engine.containers import container_outputs_dir
from mlferry.engine.fields import LEAF_TYPES
from mlferry.engine.loader import Plan, load
from mlferry.engine.pods import Pod, Stop, run_pod
from mlferry.engine.retries import next_retry
from mlferry.engine.runs import (
    ERROR,
    FAILED,
    OMITTED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    NodeEvent,
    RunResult,
    TaskRecord,
    list_runs,
    load_run,
    new_run_dir,
    now,
    write_record,
)
from mlferry.engine.submission import ArgumentError, Cluster, check_environment, workflow_arguments
from mlferry.engine.synchronization import Interrupted, Lock, default_lock_dir, holding

__all__ = ["ArgumentError", "Cluster", "NodeEvent", "RunResult", "TaskRecord", "load", "run", "list_runs",
           "load_run", "new_run_dir", "next_retry"]

log = logging.getLogger(__name__)

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
POLL_INTERRUPT = 0.1  # seconds between looks at a run's `interrupt` event
RUN_SLOTS_KEY = "local/Runs"  # the lock of `max_runs`: outside Argo's `<namespace>/<kind>/<name>` keys
_K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")



class _NodeError(Exception):
    """A node cannot run: it ends in phase Error with this message."""


# -- outcomes ---------------------------------------------------------------------------------

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


def _node_vars(prefix: str, outcome: Outcome) -> dict[str, str]:
    """`tasks.<name>.*` or `steps.<name>.*` for a finished node (operator.go, buildLocalScope)."""
    out = {f"{prefix}.status": outcome.phase, f"{prefix}.id": outcome.node_id,
           f"{prefix}.startedAt": outcome.started, f"{prefix}.finishedAt": outcome.finished}
    if outcome.children is not None:  # processAggregateNodeOutputs: JSON lists, in item order
        params = [dict(c.outputs) for c in outcome.children if c.outputs]
        results = [_json_or_string(c.result) for c in outcome.children if c.result is not None]
        out[f"{prefix}.outputs.parameters"] = _dumps(params)
        out[f"{prefix}.outputs.result"] = _dumps(results)
        return out
    out.update({f"{prefix}.outputs.parameters.{k}": v for k, v in outcome.outputs.items()})
    if outcome.result is not None:
        out[f"{prefix}.outputs.result"] = outcome.result
    if outcome.exit_code is not None:
        out[f"{prefix}.exitCode"] = str(outcome.exit_code)
    return out


def _results(outcome: Outcome) -> frozenset[str]:
    """The task results a `depends` expression can test (dag.go, evaluateDependsLogic)."""
    names = {SUCCEEDED: "Succeeded", FAILED: "Failed", ERROR: "Errored", SKIPPED: "Skipped", OMITTED: "Omitted"}
    out = {names[outcome.phase]}
    if outcome.children:
        if any(c.phase == SUCCEEDED for c in outcome.children):
            out.add("AnySucceeded")
        if all(c.phase == FAILED for c in outcome.children):
            out.add("AllFailed")
    return frozenset(out)


def _group_outcome(children: list[Outcome]) -> Outcome:
    failed = next((c for c in children if c.phase in (FAILED, ERROR)), None)
    return Outcome(failed.phase if failed else SUCCEEDED, failed.message if failed else "", children=tuple(children))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_or_string(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


# -- the run ----------------------------------------------------------------------------------

def run(plan: Plan, parameters: Mapping[str, str] | None = None, *, run_dir: str | Path,
        env: Mapping[str, str] | None = None, on_event: Callable[[NodeEvent], None] | None = None,
        cluster: Cluster | None = None, cwd: str | Path | None = None, python: str = sys.executable,
        lock_dir: str | Path | None = None, namespace: str | None = None, backoff_scale: float = 1.0,
        kill_grace: float = 2.0, interrupt: threading.Event | None = None,
        max_runs: int | None = None) -> RunResult:
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

    Ctrl-C (or SIGTERM, in the main thread) stops the run: its processes are killed, the record says
    Failed "interrupted", and KeyboardInterrupt is raised. A run in another thread is stopped the same
    way, with the same outcome, by setting `interrupt`.
    """
    base_env = dict(os.environ if env is None else env)
    cluster = cluster or Cluster.from_environment(base_env)
    # A pod sees a Secret's value only where its template asks for it (env valueFrom), as on a
    # cluster; inheriting it from this shell would hide a template that forgot to.
    base_env = {k: v for k, v in base_env.items() if k not in secret_keys(plan.spec)}
    namespace = namespace or plan.namespace or "default"
    values = workflow_arguments(plan, parameters or {}, cluster, namespace)
    check_environment(plan, cluster, namespace)
    context = _Run(plan, values, Path(run_dir), base_env, cluster, namespace, on_event,
                   cwd=Path(cwd or os.getcwd()), python=python, lock_dir=Path(lock_dir or default_lock_dir()),
                   backoff_scale=backoff_scale, kill_grace=kill_grace, interrupt=interrupt, max_runs=max_runs)
    with _interrupted_by_sigterm():
        return context.execute()


def secret_keys(node: Any) -> set[str]:
    """Every key any `secretKeyRef` in the document names."""
    if isinstance(node, Mapping):
        own = {str(node["secretKeyRef"].get("key"))} if isinstance(node.get("secretKeyRef"), Mapping) else set()
        return own.union(*(secret_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(secret_keys(v) for v in node))
    return set()


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


class _Run:
    def __init__(self, plan: Plan, values: dict[str, str], run_dir: Path, base_env: dict[str, str],
                 cluster: Cluster, namespace: str, on_event: Callable[[NodeEvent], None] | None, *,
                 cwd: Path, python: str, lock_dir: Path, backoff_scale: float, kill_grace: float,
                 interrupt: threading.Event | None = None, max_runs: int | None = None):
        self.plan, self.run_dir, self.base_env, self.cluster = plan, run_dir, base_env, cluster
        self.interrupt, self.max_runs = interrupt, max_runs
        self.namespace, self.on_event, self.cwd, self.python = namespace, on_event, cwd, python
        self.lock_dir, self.backoff_scale, self.kill_grace = lock_dir, backoff_scale, kill_grace
        self.run_id = run_dir.name
        self.stop = Stop()
        self.records: dict[str, TaskRecord] = {}
        self.failures: list[TaskRecord] = []  # in the order they ended
        self.stopped = ""  # why the main part of the run was stopped, if it was
        self.lock = threading.Lock()
        self.event_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.started = time.monotonic()
        self.result = RunResult(self.run_id, plan.name, plan.kind, RUNNING, values, started=now(), run_dir=str(run_dir))
        self.globals = self._globals(values)
        limit = plan.spec.get("parallelism")
        self.pod_slots = threading.BoundedSemaphore(int(limit)) if limit else None

    def _globals(self, values: dict[str, str]) -> dict[str, str]:
        out = {"workflow.name": self.run_id, "workflow.namespace": self.namespace, "workflow.uid": str(uuid.uuid4()),
               "workflow.creationTimestamp": self.result.started[:19] + "Z", "workflow.status": RUNNING,
               "workflow.mainEntrypoint": self.plan.entrypoint,
               "workflow.parameters.json": _dumps([{"name": k, "value": v} for k, v in values.items()])}
        out.update({f"workflow.parameters.{k}": v for k, v in values.items()})
        out.update({f"workflow.labels.{k}": str(v) for k, v in self.plan.labels.items()})
        out.update({f"workflow.annotations.{k}": str(v) for k, v in self.plan.annotations.items()})
        return out

    def scope(self) -> dict[str, str]:
        """Global variables now: status, duration and failures change as the run goes."""
        failures = [{"displayName": r.name, "message": r.message, "templateName": r.template, "phase": r.phase,
                     "podName": r.name, "finishedAt": r.finished} for r in self.failures]
        return {**self.globals, "workflow.duration": f"{time.monotonic() - self.started:.6f}",
                "workflow.failures": _dumps(failures)}

    # the whole run
    def execute(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.save()
        try:
            with self.interruptible(), self.run_slot():
                with self.workflow_deadline():
                    outcome = self.entrypoint()
                self.raise_if_interrupted()
                self.stopped = self.stop.reason
                outcome = self.exit_handler(outcome)
                self.raise_if_interrupted()
        except KeyboardInterrupt:
            self.stop.stop("interrupted")
            self.join_threads()
            self.stopped = self.stopped or "interrupted"
            self.finish(Outcome(FAILED, "interrupted"))
            raise
        return self.finish(outcome)

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
            with holding([slots], self.lock_dir, stop=self.stop, waiting=lambda _lock: self.emit(
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
            with holding(locks, self.lock_dir, stop=self.stop, waiting=lambda lock: self.emit(
                    NodeEvent(self.run_id, PENDING, self.plan.entrypoint, message=f"waiting for lock {lock.key}"))):
                return self.node("", self.plan.entrypoint, {})
        except (Interrupted, _NodeError) as err:
            return Outcome(FAILED if isinstance(err, Interrupted) else ERROR, self.stop.reason or str(err))

    def exit_handler(self, outcome: Outcome) -> Outcome:
        """spec.onExit runs whatever happened, even past the workflow's deadline (as in Argo), and
        sees `workflow.status` and `workflow.failures`; if it fails, so does the workflow."""
        on_exit = self.plan.spec.get("onExit")
        if on_exit is None:
            return outcome
        self.stop = Stop()
        self.globals["workflow.status"] = outcome.phase
        exit_outcome = self.node("onExit", on_exit, {})
        if outcome.phase == SUCCEEDED and exit_outcome.phase != SUCCEEDED:
            return replace(exit_outcome, outputs=outcome.outputs)
        return outcome

    def finish(self, outcome: Outcome) -> RunResult:
        r = self.result
        r.phase = outcome.phase if outcome.phase in (SUCCEEDED, FAILED, ERROR) else FAILED
        r.finished = now()
        r.duration = round(time.monotonic() - self.started, 3)
        r.outputs = dict(outcome.outputs) if r.phase == SUCCEEDED else {}
        r.message = "" if r.phase == SUCCEEDED else self._message(outcome)
        self.save()
        return r

    def _message(self, outcome: Outcome) -> str:
        """Why the run failed, in the words of the step that failed first."""
        if self.stopped:
            return self.stopped
        first = next((r for r in self.failures if r.type == "Pod"), self.failures[0] if self.failures else None)
        return f"{first.name}: {first.message}" if first else outcome.message

    def save(self) -> None:
        with self.lock:
            self.result.tasks = list(self.records.values())
            write_record(self.run_dir, self.result)

    def join_threads(self) -> None:
        for thread in list(self.threads):
            thread.join(timeout=self.kill_grace + 5)

    def spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    # records and events
    def emit(self, event: NodeEvent) -> None:
        if self.on_event is None:
            return
        with self.event_lock:
            try:
                self.on_event(event)
            except Exception:  # a broken progress printer must not break the run
                log.exception("on_event failed for %s", event)

    def open_record(self, name: str, template: str, kind: str, phase: str = PENDING) -> TaskRecord:
        record = TaskRecord(name=name, template=template, type=kind, phase=phase)
        with self.lock:
            self.records[name] = record
        return record

    def set_phase(self, record: TaskRecord | None, phase: str, message: str = "") -> None:
        if record is None:
            return
        record.phase = phase
        if phase == RUNNING and record.started is None:
            record.started = now()
        self.emit(NodeEvent(record.name, phase, record.template, message=message, attempt=max(record.attempts - 1, 0)))

    def close_record(self, record: TaskRecord | None, outcome: Outcome, seconds: float) -> None:
        if record is None:
            return
        record.phase, record.message = outcome.phase, outcome.message
        record.started = record.started or outcome.started
        record.finished, record.duration = outcome.finished, round(seconds, 3)
        record.outputs = dict(outcome.outputs)
        if outcome.result is not None:
            record.outputs.setdefault("result", outcome.result)
        if outcome.exit_code is not None:
            record.outputs.setdefault("exitCode", str(outcome.exit_code))
        if outcome.phase in (FAILED, ERROR):
            with self.lock:
                self.failures.append(record)
        self.emit(NodeEvent(record.name, outcome.phase, record.template, record.duration, outcome.message,
                            max(record.attempts - 1, 0)))
        self.save()

    def settled(self, name: str, template: str, outcome: Outcome) -> Outcome:
        """A node decided without running: Skipped, Omitted, or an Error before it started."""
        stamp = now()
        outcome = replace(outcome, started=stamp, finished=stamp, node_id=self.node_id(name))
        record = self.open_record(name, template, "Skipped")
        self.close_record(record, outcome, 0.0)
        return outcome

    def node_id(self, name: str) -> str:
        return f"{self.run_id}-{zlib.crc32(name.encode())}"

    # one node: a template called with arguments
    def node(self, name: str, template_name: str, arguments: Mapping[str, str]) -> Outcome:
        t = self.plan.templates[template_name]
        leaf = any(k in t for k in LEAF_TYPES)
        record = self.open_record(name or template_name, template_name, _node_type(t)) if name or leaf else None
        started, clock, finished = now(), time.monotonic(), None
        try:
            scope = {**self.scope(), **self.inputs(t, arguments)}
            locks = self.locks(t.get("synchronization"), scope)
            with holding(locks, self.lock_dir, stop=self.stop,
                         waiting=lambda lock: self.set_phase(record, PENDING, f"waiting for lock {lock.key}")):
                if not leaf:
                    self.set_phase(record, RUNNING)
                outcome = self.retrying(name, t, scope, record)
                # Stamped before the locks are released: the next holder's start can then never come
                # before this node's end in the records, which would show a mutex held twice at once.
                finished = now()
        except (_NodeError, ExpressionError) as err:
            outcome = Outcome(ERROR, str(err))
        except Interrupted:
            outcome = Outcome(FAILED, self.stop.reason)
        outcome = replace(outcome, started=started, finished=finished or now(), node_id=self.node_id(name))
        self.close_record(record, outcome, time.monotonic() - clock)
        return outcome

    def inputs(self, t: Mapping[str, Any], arguments: Mapping[str, str]) -> dict[str, str]:
        """`inputs.parameters.*` from arguments, values and defaults (common/util.go, ProcessArgs)."""
        resolved = []
        for p in (t.get("inputs") or {}).get("parameters") or []:
            value = arguments.get(p["name"], p.get("value", p.get("default")))
            ref = (p.get("valueFrom") or {}).get("configMapKeyRef")
            if p["name"] not in arguments and ref is not None:
                value = self.config_map_value(p, ref)
            if value is None:
                raise _NodeError(f"inputs.parameters.{p['name']} was not supplied")
            value = substitute(_scalar(value), self.globals)
            resolved.append(_parameter_json(p, value))
        out = {f"inputs.parameters.{p['name']}": p["value"] for p in resolved}
        out["inputs.parameters"] = _dumps(resolved)  # what `source: '{{inputs.parameters}}'` receives
        return out

    def config_map_value(self, p: Mapping[str, Any], ref: Mapping[str, str]) -> str:
        try:
            return self.cluster.lookup("ConfigMap", ref["name"], ref["key"], self.namespace)
        except LookupError as err:
            default = (p.get("valueFrom") or {}).get("default")
            if default is None:
                raise _NodeError(f"unable to retrieve inputs.parameters.{p['name']} from ConfigMap: {err}") from None
            return _scalar(default)

    def locks(self, sync: Mapping[str, Any] | None, scope: Mapping[str, str]) -> list[Lock]:
        if not sync:
            return []
        sync = substitute_all(dict(sync), scope)
        out = []
        for m in list(sync.get("mutexes") or []) + ([sync["mutex"]] if "mutex" in sync else []):
            out.append(Lock(f"{m.get('namespace') or self.namespace}/Mutex/{m['name']}"))
        for s in list(sync.get("semaphores") or []) + ([sync["semaphore"]] if "semaphore" in sync else []):
            ref, ns = s["configMapKeyRef"], s.get("namespace") or self.namespace
            try:
                limit = int(self.cluster.lookup("ConfigMap", ref["name"], ref["key"], ns))
            except (LookupError, ValueError) as err:
                raise _NodeError(f"semaphore {ref['name']}/{ref['key']}: {err}") from None
            out.append(Lock(f"{ns}/ConfigMap/{ref['name']}/{ref['key']}", max(limit, 1)))
        return out

    def retrying(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], record: TaskRecord | None) -> Outcome:
        strategy = substitute_all(dict(t["retryStrategy"]), scope) if t.get("retryStrategy") else None
        first, attempt, deadline = time.monotonic(), 0, None
        while True:
            if record is not None:
                record.attempts = attempt + 1
            clock = time.monotonic()
            outcome = self.attempt(name, t, scope, attempt, deadline, record)
            if outcome.phase == SUCCEEDED or strategy is None or self.stop.is_set():
                return outcome
            decision = next_retry(strategy, attempt + 1, outcome, time.monotonic() - clock, first, time.monotonic(),
                                  self.backoff_scale)
            if decision.wait is None:
                suffix = f" ({decision.reason} after {attempt + 1} attempts)" if attempt else ""
                return replace(outcome, message=outcome.message + suffix)
            self.set_phase(record, PENDING, f"retrying in {decision.wait:.1f}s: {outcome.message}")
            if self.stop.wait(decision.wait):
                return outcome
            attempt, deadline = attempt + 1, decision.deadline

    def attempt(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], attempt: int,
                deadline: float | None, record: TaskRecord | None) -> Outcome:
        if "dag" in t:
            return _Dag(self, name, t, scope).run()
        if "steps" in t:
            return _Steps(self, name, t, scope).run()
        return self.pod(name or t["name"], t, {**scope, "retries": str(attempt)}, attempt, deadline, record)

    # a leaf template as a process
    def pod(self, name: str, t: Mapping[str, Any], scope: Mapping[str, str], attempt: int,
            retry_deadline: float | None, record: TaskRecord | None) -> Outcome:
        kind = "script" if "script" in t else "container"
        safe = re.sub(r"[^A-Za-z0-9._()-]+", "_", name)
        pod_dir = self.run_dir / "pods" / f"{safe}-{attempt}"
        outputs = self.output_files(t, kind, pod_dir / "outputs")
        scope = {**scope, "pod.name": f"{self.run_id}-{safe}-{attempt}", "node.name": f"{self.run_id}.{name}",
                 **{f"outputs.parameters.{k}.path": str(path) for k, (path, _d) in outputs.items()}}
        body = substitute_all(dict(t[kind]), scope)
        defined = self.container_vars(body)
        # hera__outputs_directory: where the Hera runner writes outputs, this pod's own folder
        env = {**self.base_env, **defined, "hera__outputs_directory": str(pod_dir / "outputs")}
        argv = [_expand(a, defined) for a in [*body["command"], *body.get("args", [])]]
        # The image's Python is this machine's interpreter: the environment where the steps are installed.
        argv[0] = self.python if _PYTHON.match(Path(argv[0]).name) else argv[0]
        script = None
        if kind == "script":  # Argo writes the source to a file and appends its path to the args
            script = (pod_dir / "script", body["source"])
            argv.append(str(script[0]))
        log_path = self.run_dir / "logs" / f"{safe}.log"
        if record is not None:
            record.log = str(log_path)
        if attempt:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log_file:
                log_file.write(f"--- retry {attempt} ---\n")
        with self.pod_slot():  # the pod exists from here: its deadline counts from now
            deadline, why = _pod_deadline(t, scope, retry_deadline)
            self.set_phase(record, RUNNING)
            result = run_pod(Pod(name, argv, env, self.cwd, log_path, outputs, script, deadline, why), self.stop,
                             kill_grace=self.kill_grace)
        return Outcome(result.phase, result.message, result.outputs, result.result, result.exit_code)

    def output_files(self, t: Mapping[str, Any], kind: str, local_dir: Path) -> dict[str, tuple[Path, str | None]]:
        """Each output parameter's file, moved from the container's outputs directory to this pod's."""
        container_dir = container_outputs_dir(t[kind])
        out = {}
        for p in (t.get("outputs") or {}).get("parameters") or []:
            relative = str(p["valueFrom"]["path"])[len(container_dir) + 1:]
            default = p["valueFrom"].get("default")
            out[p["name"]] = (local_dir / relative, None if default is None else _scalar(default))
        return out

    def container_vars(self, body: Mapping[str, Any]) -> dict[str, str]:
        """The container's own variables: envFrom, then env (env wins, as in Kubernetes)."""
        defined: dict[str, str] = {}
        try:
            for source in body.get("envFrom") or []:
                defined.update(self.env_from(source))
            for var in body.get("env") or []:
                value = self.env_value(var, defined)
                if value is not None:
                    defined[var["name"]] = value
        except LookupError as err:
            raise _NodeError(f"CreateContainerConfigError: {err}") from None
        return defined

    def env_from(self, source: Mapping[str, Any]) -> dict[str, str]:
        for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if key in source:
                ref = source[key]
                objects = self.cluster.config_maps if kind == "ConfigMap" else self.cluster.secrets
                if ref["name"] not in objects:
                    if ref.get("optional"):
                        return {}
                    raise LookupError(f"{kind.lower()} \"{ref['name']}\" not found")
                return {source.get("prefix", "") + k: v for k, v in objects[ref["name"]].items()}
        return {}

    def env_value(self, var: Mapping[str, Any], defined: Mapping[str, str]) -> str | None:
        if "valueFrom" not in var:
            return _expand(str(var.get("value", "")), defined)
        for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            ref = var["valueFrom"].get(key)
            if ref is not None:
                try:
                    return self.cluster.lookup(kind, ref["name"], ref["key"], self.namespace)
                except LookupError:
                    if ref.get("optional"):
                        return None
                    raise
        return None

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


def _node_type(t: Mapping[str, Any]) -> str:
    return "DAG" if "dag" in t else "Steps" if "steps" in t else "Pod"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _parameter_json(p: Mapping[str, Any], value: str) -> dict[str, Any]:
    """An input parameter as Argo marshals it into {{inputs.parameters}} (Go field order)."""
    out: dict[str, Any] = {"name": p["name"]}
    if "default" in p:
        out["default"] = _scalar(p["default"])
    out["value"] = value
    if p.get("enum"):
        out["enum"] = [_scalar(v) for v in p["enum"]]
    if p.get("description"):
        out["description"] = p["description"]
    return out


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ is a literal $."""
    return _K8S_VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _pod_deadline(t: Mapping[str, Any], scope: Mapping[str, str], retry_deadline: float | None) -> tuple[float | None, str]:
    seconds = t.get("activeDeadlineSeconds")
    candidates = []
    if seconds is not None:
        seconds = int(substitute(str(seconds), scope))
        candidates.append((time.monotonic() + seconds, f"deadline exceeded (activeDeadlineSeconds {seconds})"))
    if retry_deadline is not None:
        candidates.append((retry_deadline, "deadline exceeded (retryStrategy.backoff.maxDuration)"))
    return min(candidates) if candidates else (None, "")


# -- calling templates from DAG tasks and steps -----------------------------------------------

class _Pool:
    """Runs children in threads, at most `limit` at once (template parallelism).

    Only the thread of the DAG or steps node that owns the pool calls it.
    """

    def __init__(self, run: _Run, limit: int | None):
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


@dataclass
class _Group:
    """The children of one task or step: one node, or one per item when it fans out."""

    name: str
    expanded: bool
    outcomes: list[Outcome | None]
    record: TaskRecord | None = None
    clock: float = field(default_factory=time.monotonic)

    @property
    def complete(self) -> bool:
        return all(o is not None for o in self.outcomes)

    def outcome(self) -> Outcome:
        if not self.expanded:
            return self.outcomes[0]  # type: ignore[return-value]
        return _group_outcome(self.outcomes)  # type: ignore[arg-type]


class _Calls:
    """What DAG and steps templates share: turning a task or step into nodes to run."""

    def __init__(self, run: _Run, name: str, t: Mapping[str, Any], scope: Mapping[str, str]):
        self.ctx, self.name, self.template, self.scope = run, name, t, dict(scope)
        limit = t.get("parallelism")
        self.pool = _Pool(run, int(substitute(str(limit), scope)) if limit is not None else None)
        self.groups: dict[str, _Group] = {}

    def child(self, call_name: str) -> str:
        return f"{self.name}.{call_name}" if self.name else call_name

    def start(self, call: Mapping[str, Any], scope: Mapping[str, str]) -> Outcome | None:
        """Start a task or step; return its outcome if it is decided without running anything."""
        name = self.child(call["name"])
        fields_ = {k: call[k] for k in ("arguments", "when", "withItems", "withParam") if k in call}
        try:
            resolved = substitute_all(fields_, scope)
            items = _items(resolved)
        except (_NodeError, ExpressionError) as err:
            return self.ctx.settled(name, call["template"], Outcome(ERROR, str(err)))
        if items is None:
            group = _Group(name, False, [None])
            self.groups[call["name"]] = group
            self.prepare(call, name, resolved, group, 0)
        elif not items:
            return self.ctx.settled(name, call["template"], Outcome(SKIPPED, "Skipped, empty params",
                                                                    self.skipped_outputs(call)))
        else:
            group = _Group(name, True, [None] * len(items))
            group.record = self.ctx.open_record(name, call["template"], "TaskGroup")
            self.ctx.set_phase(group.record, RUNNING)
            self.groups[call["name"]] = group
            for i, item in enumerate(items):
                self.prepare(call, f"{name}({i}:{_item_label(item)})", resolved, group, i, _item_vars(item))
        return self.finish(call["name"]) if group.complete else None

    def prepare(self, call: Mapping[str, Any], name: str, resolved: Mapping[str, Any], group: _Group, i: int,
                item: Mapping[str, str] | None = None) -> None:
        """Decide one node: Skipped by its `when`, Error if unresolved, else queued to run."""
        try:
            if item is not None:
                resolved = substitute_all({k: v for k, v in resolved.items() if k in ("arguments", "when")}, item)
            if "when" in resolved and not evaluate_when(_resolved(str(resolved["when"]), "when")):
                group.outcomes[i] = self.ctx.settled(name, call["template"], Outcome(
                    SKIPPED, f"when '{resolved['when']}' evaluated false", self.skipped_outputs(call)))
                return
            args = {p["name"]: _resolved(_scalar(p["value"]), f"arguments.parameters.{p['name']}")
                    for p in (resolved.get("arguments") or {}).get("parameters") or []}
        except (_NodeError, ExpressionError) as err:
            group.outcomes[i] = self.ctx.settled(name, call["template"], Outcome(ERROR, str(err)))
            return
        self.pool.submit((call["name"], i), lambda: self.ctx.node(name, call["template"], args))

    def skipped_outputs(self, call: Mapping[str, Any]) -> dict[str, str]:
        """A skipped node offers its outputs' valueFrom.default, if any (Argo v4)."""
        t = self.ctx.plan.templates[call["template"]]
        return {p["name"]: _scalar(p["valueFrom"]["default"]) for p in (t.get("outputs") or {}).get("parameters") or []
                if "default" in (p.get("valueFrom") or {})}

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
                              node_id=self.ctx.node_id(group.name))
            self.ctx.close_record(group.record, outcome, time.monotonic() - group.clock)
        return outcome

    def outputs(self, scope: Mapping[str, str]) -> dict[str, str]:
        """The template's outputs from its children (dag.go, getTemplateOutputsFromScope)."""
        out = {}
        for p in (self.template.get("outputs") or {}).get("parameters") or []:
            source = p["valueFrom"]
            try:
                out[p["name"]] = substitute(str(source["parameter"]), scope, allow_unresolved=False)
            except Unresolved as err:
                if "default" not in source:
                    raise _NodeError(f"outputs.parameters.{p['name']}: {err}") from None
                out[p["name"]] = _scalar(source["default"])
        return out


class _Dag(_Calls):
    def __init__(self, run: _Run, name: str, t: Mapping[str, Any], scope: Mapping[str, str]):
        super().__init__(run, name, t, scope)
        self.tasks = {task["name"]: task for task in t["dag"]["tasks"]}
        self.depends = {name: parse_depends(_depends_text(task), self.continue_on) for name, task in self.tasks.items()}
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
        if depends.tasks and not depends.predicate({d: _results(self.done[d]) for d in depends.tasks}):
            return self.ctx.settled(self.child(name), task["template"],
                                    Outcome(OMITTED, "omitted: depends condition not met"))
        scope = dict(self.scope)
        for done_name, outcome in self.done.items():
            scope.update(_node_vars(f"tasks.{done_name}", outcome))
        return self.start(task, scope)

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
        scope = dict(self.scope)
        for name, outcome in self.done.items():
            scope.update(_node_vars(f"tasks.{name}", outcome))
        try:
            return Outcome(SUCCEEDED, outputs=self.outputs(scope))
        except (_NodeError, ExpressionError) as err:
            return Outcome(ERROR, str(err))


class _Steps(_Calls):
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
                scope.update(_node_vars(f"steps.{step['name']}", done[step["name"]]))
                phase = done[step["name"]].phase
                flags = step.get("continueOn") or {}
                if (phase == FAILED and not flags.get("failed")) or (phase == ERROR and not flags.get("error")):
                    return Outcome(FAILED, f"child '{self.child(step['name'])}' failed")
        try:
            return Outcome(SUCCEEDED, outputs=self.outputs(scope))
        except (_NodeError, ExpressionError) as err:
            return Outcome(ERROR, str(err))


def _depends_text(task: Mapping[str, Any]) -> str:
    if "depends" in task:
        return str(task["depends"])
    return " && ".join(str(d) for d in task.get("dependencies") or [])


def _items(resolved: Mapping[str, Any]) -> list[Any] | None:
    if "withItems" in resolved:
        return list(resolved["withItems"])
    if "withParam" not in resolved:
        return None
    text = str(resolved["withParam"])
    try:
        items = json.loads(text)
    except ValueError:
        items = None
    if not isinstance(items, list):
        raise _NodeError(f"withParam value could not be parsed as a JSON list: {text.strip()}")
    return items


def _item_vars(item: Any) -> dict[str, str]:
    """{{item}} and {{item.<key>}} for one item (operator.go, processItem)."""
    if not isinstance(item, dict):
        return {"item": _scalar(item)}
    return {"item": _dumps(item), **{f"item.{k}": _scalar(v) for k, v in item.items()}}


def _item_label(item: Any) -> str:
    if isinstance(item, dict):
        return ",".join(sorted(f"{k}:{_scalar(v)}" for k, v in item.items()))
    return _scalar(item)


def _resolved(text: str, what: str) -> str:
    """Argo fails a node whose arguments still hold a variable nothing could resolve."""
    left = tags(text)
    if left:
        raise _NodeError(f"{what}: failed to resolve {{{{{left[0]}}}}}")
    return text



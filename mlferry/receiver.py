"""`mlferry events serve`: MLflow's alias webhooks, received on this machine, promoted by the local executor.

It stands in for the EventSource and the Sensor with their own code (signature: steps/signature.py;
filter and parameters: sensors/parameters.py), so a local run gets what a cluster run would. Beyond
the Sensor it refuses replayed delivery ids and runs at most `parallelism` promotions at once, never
two for one model and environment (a newer queued event replaces an older one): the latest alias move
commits last. Events missed while it is down are caught up by `mlferry reconcile`, as in a cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Mapping

from mlferry.local import LocalArgo
from mlferry.receiver_http import HEALTH_PATH, HttpServer, Reply
from mlferry.promotion import TEMPLATE, PromotionResult, failure_line
from mlferry.sensors.objects import trigger_parameters
from mlferry.steps.gitops.credentials import display_url
from mlferry.steps.event_filter import AmbiguousBody, accept, environment_aliases, parse_body
from mlferry.steps.settings import SettingsError
from mlferry.steps.signature import (DELIVERY_ID_HEADER, MAX_AGE_SECONDS, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError,
                             verify)
from mlferry.steps.verify_event import SECRET_ENV
from mlferry.engine import NodeEvent, RunResult, list_runs
from mlferry.table import printable

log = logging.getLogger("mlferry.receiver")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# A queued event whose signed timestamp gets older than this is not run: verify-event would reject it as
# stale (MAX_AGE_SECONDS), and the failure would be tagged on the version as if the promotion had failed.
QUEUE_AGE_LIMIT = MAX_AGE_SECONDS - 10


@dataclass(frozen=True)
class Delivery:
    """One accepted webhook event, waiting for or in its promotion run."""

    delivery_id: str
    action: str
    model: str
    alias: str
    env: str
    timestamp: int  # X-MLflow-Timestamp, unix seconds (signed)
    parameters: dict[str, str] = field(repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.env)

    def describe(self) -> str:
        return f"{self.model} alias {self.alias} {self.action} → {self.env} (delivery {self.delivery_id})"


def rfc3339(moment: float) -> str:
    """A time as Argo Events' CloudEvents context writes it (and verify-event reads it)."""
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


SEEN_FILE = "receiver-deliveries.json"  # beside the runs folder: delivery ids accepted, and until when


# --- state shared by the HTTP threads and the worker ---------------------------------------------

class SeenDeliveries:
    """Delivery ids accepted recently: remembered for as long as their signature stays fresh, and,
    with a `file`, across restarts of the receiver (a replay right after a restart is refused too)."""

    def __init__(self, window: int = MAX_AGE_SECONDS, file: Path | None = None):
        self.window = window
        self.file = file
        self._until: dict[str, float] = _load_seen(file)
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str, sent: int, now: float) -> bool:
        with self._lock:
            for known in [k for k, until in self._until.items() if until < now]:
                del self._until[known]
            if delivery_id in self._until:
                return False
            # A copy signed at `sent` passes the signature check until sent + window.
            self._until[delivery_id] = max(now, sent) + self.window + 1
            _save_seen(self.file, self._until)
            return True


def _load_seen(file: Path | None) -> dict[str, float]:
    """The remembered ids; an unreadable file is logged and forgotten (the window bounds the risk)."""
    if file is None or not file.exists():
        return {}
    try:
        found = json.loads(file.read_text())
        return {str(k): float(v) for k, v in found.items()}
    except (OSError, ValueError, AttributeError) as err:
        log.warning("cannot read the accepted delivery ids in %s (%s): starting without them", file, err)
        return {}


def _save_seen(file: Path | None, until: dict[str, float]) -> None:
    """Written before the 202 is sent, atomically (a crash leaves the old file or the new one)."""
    if file is None:
        return
    partial = file.with_name(file.name + ".partial")
    partial.write_text(json.dumps(until))
    os.replace(partial, file)


class PromotionQueue:
    """Accepted deliveries in order, at most one per (model, environment): a newer one replaces it.

    `take` hands out the oldest one whose model and environment has no run in progress, and marks it
    in progress until `done`: two runs of one model and environment never overlap.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str], Delivery] = OrderedDict()
        self._in_progress: dict[tuple[str, str], Delivery] = {}
        self._ready = threading.Condition()

    def put(self, delivery: Delivery) -> Delivery | None:
        """Queue `delivery`; return the queued one it replaces, if any."""
        with self._ready:
            replaced = self._items.get(delivery.key)
            self._items[delivery.key] = delivery  # keeps the replaced one's place in the line
            self._ready.notify()
            return replaced

    def take(self, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        with self._ready:
            while True:
                key = next((k for k in self._items if k not in self._in_progress), None)
                if key is not None:
                    self._in_progress[key] = delivery = self._items.pop(key)
                    return delivery
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)

    def done(self, delivery: Delivery) -> None:
        with self._ready:
            if self._in_progress.get(delivery.key) is delivery:
                del self._in_progress[delivery.key]
            self._ready.notify_all()  # a delivery for the same model and environment may start now

    def in_progress(self) -> list[Delivery]:
        with self._ready:
            return list(self._in_progress.values())

    def drain(self) -> list[Delivery]:
        with self._ready:
            items = list(self._items.values())
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)


# --- the receiver ------------------------------------------------------------------------------

class Receiver:
    """What happens to one request (`receive`), and the promotions it starts (`work`, `parallelism` at once)."""

    def __init__(self, local: LocalArgo, secret: str, *, clock: Callable[[], float] = time.time,
                 on_event: Callable[[NodeEvent], None] | None = None, parallelism: int | None = None,
                 seen_file: Path | None = None):
        self.local = local
        self.bundle = local.bundle
        self.settings = local.bundle.settings
        self.path = local.bundle.events.path
        self.secret = secret
        self.clock = clock
        self.on_event = on_event
        self.seen = SeenDeliveries(file=seen_file)
        self.queue = PromotionQueue()
        self.parallelism = max(1, parallelism or local.bundle.parallelism)
        self.interrupt = threading.Event()  # set on shutdown: the runs in progress stop
        self._workers: list[threading.Thread] = []
        self.finished = 0
        self._finished_lock = threading.Lock()
        self.accepting = True

    # the request, from headers and raw bytes to an answer
    def receive(self, headers: Message, body: bytes) -> Reply:
        if not self.accepting:
            return Reply.error(HTTPStatus.SERVICE_UNAVAILABLE, "the receiver is shutting down")
        content_type = headers.get_content_type() if headers.get("Content-Type") else ""
        if content_type != "application/json":
            return Reply.error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               f"Content-Type must be application/json, not {content_type or 'missing'}")
        delivery_id = headers.get(DELIVERY_ID_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        now = self.clock()
        try:
            verify(self.secret, delivery_id, timestamp, body, signature, now=now)
        except SignatureError as err:
            return Reply.error(HTTPStatus.UNAUTHORIZED, str(err), f"rejected delivery {(printable(delivery_id, 80) or '-')}: {err}")
        try:
            body_text = body.decode("utf-8")
            payload = parse_body(body_text)
        except AmbiguousBody as err:
            return Reply.error(HTTPStatus.BAD_REQUEST, str(err), f"delivery {delivery_id}: {err}")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return Reply.error(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {err}",
                               f"delivery {delivery_id}: the body is not JSON: {err}")
        decision = accept(payload, self.settings)
        if not decision.accepted:
            return Reply(HTTPStatus.OK, {"status": "ignored", "reason": decision.reason},
                         f"ignored delivery {delivery_id}: {decision.reason}")
        if not self.seen.first_time(delivery_id, int(timestamp), now):
            return Reply(HTTPStatus.OK, {"status": "duplicate", "delivery_id": delivery_id},
                         f"duplicate delivery {delivery_id}: already accepted, nothing started")
        delivery = Delivery(delivery_id, decision.action, decision.model, decision.alias, decision.env,
                            int(timestamp),
                            trigger_parameters(self.bundle, decision.env, headers.items(), body_text, payload,
                                               rfc3339(now)))
        replaced = self.queue.put(delivery)
        answer = {"status": "accepted", "delivery_id": delivery_id, "model": delivery.model, "env": delivery.env}
        note = f"accepted {delivery.describe()}"
        if replaced:
            answer["replaces"] = replaced.delivery_id
            note += f", replacing queued delivery {replaced.delivery_id}"
        return Reply(HTTPStatus.ACCEPTED, answer, note)

    def health(self) -> dict[str, Any]:
        """What a probe or an operator needs: accepting or stopping, and the promotions in progress by
        delivery, model and environment (an empty list when idle, never a bare null)."""
        running = self.queue.in_progress()
        return {"status": "ok" if self.accepting else "stopping", "path": self.path, "queued": len(self.queue),
                "running": [{"delivery_id": d.delivery_id, "model": d.model, "env": d.env} for d in running],
                "parallelism": self.parallelism, "finished": self.finished}

    # the promotions, in `parallelism` worker threads
    def work(self) -> None:
        """Run promotions until KeyboardInterrupt (SIGINT, SIGTERM), which the calling main thread receives;
        then call `stop`. Workers are threads, so the main thread stays free to take the signal."""
        workers = [threading.Thread(target=self._worker, name=f"mlferry-promote-{i + 1}", daemon=True)
                   for i in range(self.parallelism)]
        for worker in workers:
            worker.start()
        self._workers = workers
        # Sleep, not join(timeout): a KeyboardInterrupt that lands inside Thread.join can mark a
        # running worker as stopped (CPython 3.11, _wait_for_tstate_lock releases the running
        # thread's lock), and `stop` would then not wait for the run it interrupts.
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the runs in progress (each ends Failed "interrupted") and wait for their workers."""
        self.accepting = False
        self.interrupt.set()
        for worker in self._workers:
            worker.join()

    def _worker(self) -> None:
        while not self.interrupt.is_set():
            delivery = self.queue.take(timeout=0.5)
            if delivery is None:
                continue
            try:
                self.promote(delivery)
            except Exception:  # a bug: say so, keep the worker (and the other runs) going
                log.exception("the promotion of %s failed in the receiver", delivery.describe())
            finally:
                self.queue.done(delivery)

    def promote(self, delivery: Delivery) -> None:
        waited = self.clock() - delivery.timestamp
        if waited > QUEUE_AGE_LIMIT:
            log.warning("skipped %s: it waited %.0f s, its signature would be stale when the run starts; "
                        "`mlferry reconcile` catches up", delivery.describe(), waited)
            return
        if self.interrupt.is_set():
            log.warning("stopped %s before its run started; `mlferry reconcile` catches up", delivery.describe())
            return
        try:
            run = self.local.submit(TEMPLATE, delivery.parameters, on_event=self.on_event, interrupt=self.interrupt)
        except KeyboardInterrupt:  # the receiver is stopping: the executor stopped the run
            stopped = self._run_of(delivery)
            if stopped:
                log.warning("stopped run %s of %s: interrupted; `mlferry reconcile` catches up",
                            stopped.run_id, delivery.describe())
            else:
                log.warning("stopped %s before its run started; `mlferry reconcile` catches up", delivery.describe())
            return
        except (ValueError, LookupError, OSError, RuntimeError) as err:  # the run could not start
            log.error("could not start a run for %s: %s", delivery.describe(), err)
            return
        finally:
            with self._finished_lock:
                self.finished += 1
        log.info("%s", run_line(run, delivery))

    def _run_of(self, delivery: Delivery) -> RunResult | None:
        runs = [r for r in list_runs(self.local.runs_root) if r.parameters.get("delivery_id") == delivery.delivery_id]
        return runs[0] if runs else None


def run_line(run: RunResult, delivery: Delivery) -> str:
    """One log line for a finished run: id, phase, and where it went or why it failed."""
    head = f"run {run.run_id} {run.phase} in {run.duration or 0:.1f}s: {delivery.describe()}"
    if run.phase != "Succeeded":
        return f"{head}: {failure_line(run)} (details: mlferry runs show {run.run_id})"
    result = PromotionResult(run)
    retired = next((t for t in run.tasks if t.name == "retire" and t.phase == "Succeeded"), None)
    if retired is not None:  # the alias was deleted: its folder is removed (when prune is on)
        sha, folders = retired.outputs.get("sha", ""), _folders(retired.outputs.get("folders", ""))
        if not sha:
            return f"{head}: nothing removed (prune is off)"
        changed = retired.outputs.get("changed") == "true"
        change = f"commit {sha[:12]}" if changed else f"nothing to remove (head {sha[:12]})"
        return f"{head}: removed {', '.join(folders) or 'no folder'} {change}"
    if not result.commit:
        return f"{head}: no commit"
    change = f"commit {result.commit[:12]}" if result.changed else f"nothing to change (head {result.commit[:12]})"
    return f"{head}: v{result.output('resolve', 'version')} {result.folder}/ {change}"


def _folders(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return [text] if text else []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# --- HTTP --------------------------------------------------------------------------------------

# --- the command -------------------------------------------------------------------------------

def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, runs_root: str | Path, config: str | None = None,
          environ: Mapping[str, str] | None = None, on_event: Callable[[NodeEvent], None] | None = None) -> int:
    """Receive webhooks until SIGINT or SIGTERM; running promotions are stopped cleanly, queued ones dropped."""
    environ = os.environ if environ is None else environ
    secret = environ.get(SECRET_ENV, "")
    if not secret:
        raise SettingsError(f"{SECRET_ENV} is not set, so no event could be trusted; give it the webhook's secret "
                            "(`mlferry stack env` has the local stack's)")
    local = LocalArgo.from_environment(config, runs_root, environ)
    settings = local.bundle.settings
    settings.require_gitops_repo()
    local.runs_root.mkdir(parents=True, exist_ok=True)
    local.warm_server(local.environ)  # Hera imported before the first event, not after it
    receiver = Receiver(local, secret, on_event=on_event, seen_file=local.runs_root.parent / SEEN_FILE)
    try:
        server = HttpServer(host, port, receiver)
    except OSError as err:
        raise RuntimeError(f"cannot listen on {host}:{port}: {err.strerror}; is another receiver running? "
                           "choose another --port") from None
    aliases = ", ".join(f"{a}→{env}" for env, names in environment_aliases(settings).items() for a in names)
    bound_host, bound_port = server.address
    log.info("listening on http://%s:%d%s (health: %s); aliases %s; promotions run %d at a time into %s (%s); "
             "runs in %s", bound_host, bound_port, receiver.path, HEALTH_PATH, aliases or "none",
             receiver.parallelism, display_url(settings.gitops_repo), settings.gitops_branch, local.runs_root)
    server.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        receiver.work()
    except KeyboardInterrupt:
        receiver.accepting = False
        log.info("stopping: no new events are accepted")
        receiver.stop()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        server.stop()
        for delivery in receiver.queue.drain():
            log.warning("dropped queued %s; `mlferry reconcile` catches up", delivery.describe())
        local.close()
    log.info("stopped after %d run(s)", receiver.finished)
    return 0


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt

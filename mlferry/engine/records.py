"""The live record of a run: each node's TaskRecord, the progress events, and run.json kept current.

Nodes end in many threads; this is where they meet, under one lock, so that run.json and the
events always show one consistent run (engine.runs reads the record back later).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

from mlferry.engine.nodes import Outcome
from mlferry.engine.runs import (
    ERROR,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    NodeEvent,
    RunResult,
    TaskRecord,
    now,
    write_record,
)

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, result: RunResult, run_dir: Path, on_event: Callable[[NodeEvent], None] | None):
        self.result, self.run_dir, self.on_event = result, run_dir, on_event
        self.run_id = result.run_id
        self.records: dict[str, TaskRecord] = {}
        self.failures: list[TaskRecord] = []  # in the order they ended
        self.lock = threading.Lock()
        self.event_lock = threading.Lock()
        self.started = time.monotonic()

    def emit(self, event: NodeEvent) -> None:
        if self.on_event is None:
            return
        with self.event_lock:
            try:
                self.on_event(event)
            except Exception:  # a broken progress printer must not break the run
                log.exception("on_event failed for %s", event)

    def save(self) -> None:
        with self.lock:
            self.result.tasks = list(self.records.values())
            write_record(self.run_dir, self.result)

    def open(self, name: str, template: str, kind: str, phase: str = PENDING) -> TaskRecord:
        record = TaskRecord(name=name, template=template, type=kind, phase=phase)
        with self.lock:
            self.records[name] = record
        return record

    def set_phase(self, record: TaskRecord | None, phase: str, message: str = "", retry: str = "") -> None:
        if record is None:
            return
        record.phase = phase
        if phase == RUNNING and record.started is None:
            record.started = now()
        self.emit(NodeEvent(record.name, phase, record.template, message=message,
                            attempt=max(record.attempts - 1, 0), retry=retry))

    def close(self, record: TaskRecord | None, outcome: Outcome, seconds: float) -> None:
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
        self.close(self.open(name, template, "Skipped"), outcome, 0.0)
        return outcome

    def node_id(self, name: str) -> str:
        return f"{self.run_id}-{zlib.crc32(name.encode())}"

    def finish(self, outcome: Outcome, stopped: str) -> RunResult:
        """The run's end: its phase, outputs and message, saved."""
        r = self.result
        r.phase = outcome.phase if outcome.phase in (SUCCEEDED, FAILED, ERROR) else FAILED
        r.finished = now()
        r.duration = round(time.monotonic() - self.started, 3)
        r.outputs = dict(outcome.outputs) if r.phase == SUCCEEDED else {}
        r.message = "" if r.phase == SUCCEEDED else self._message(outcome, stopped)
        self.save()
        return r

    def _message(self, outcome: Outcome, stopped: str) -> str:
        """Why the run failed, in the words of the step that failed first."""
        if stopped:
            return stopped
        first = next((r for r in self.failures if r.type == "Pod"), self.failures[0] if self.failures else None)
        return f"{first.name}: {first.message}" if first else outcome.message

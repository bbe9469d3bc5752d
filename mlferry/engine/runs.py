"""Run records: what a local run did, kept on disk so `mlferry runs list/show` can read it later.

A run lives in its own folder under a runs root, named like the workflow Argo would create
(`<generateName><5 random characters>`): `run.json` is the record, `logs/` holds one log per task
(stdout and stderr, as `argo logs` shows them), `pods/` what each task ran with (script file,
outputs directory).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RECORD = "run.json"

# Node phases, as Argo names them.
PENDING, RUNNING, SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED = (
    "Pending", "Running", "Succeeded", "Failed", "Error", "Skipped", "Omitted")
FINISHED = (SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED)


@dataclass(frozen=True)
class NodeEvent:
    """Progress of one task, step or nested template: what `argo watch` would update."""

    name: str
    phase: str
    template: str
    duration: float | None = None
    message: str = ""
    attempt: int = 0
    retry: str = ""  # while Pending between attempts: "retry 2 of 3 in 4s (gives up in 21s)"


@dataclass
class TaskRecord:
    name: str
    template: str
    type: str  # Pod, DAG, Steps, TaskGroup, Skipped
    phase: str
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    message: str = ""
    attempts: int = 0


@dataclass
class RunResult:
    run_id: str
    workflow: str  # the plan's name (template or workflow name)
    kind: str
    phase: str
    parameters: dict[str, str]
    started: str
    finished: str | None = None
    duration: float | None = None
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    tasks: list[TaskRecord] = field(default_factory=list)
    run_dir: str = ""

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED

    def task(self, name: str) -> TaskRecord:
        for record in self.tasks:
            if record.name == name:
                return record
        raise KeyError(f"run {self.run_id} has no task {name!r}")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_dir(runs_root: str | Path, generate_name: str) -> Path:
    """A fresh folder named as Argo names a submitted workflow: generateName + 5 characters."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    alphabet = string.ascii_lowercase + string.digits
    while True:
        path = root / (generate_name + "".join(secrets.choice(alphabet) for _ in range(5)))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_record(run_dir: str | Path, result: RunResult) -> None:
    """Replace run.json atomically, so a reader never sees half a record."""
    run_dir = Path(run_dir)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run.", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(result), out, indent=2)
    os.replace(tmp, run_dir / RECORD)


def read_record(path: str | Path) -> RunResult:
    data = json.loads(Path(path).read_text())
    tasks = [TaskRecord(**_known(TaskRecord, t)) for t in data.get("tasks", [])]
    return RunResult(**{**_known(RunResult, data), "tasks": tasks})


def _known(cls: Any, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def list_runs(runs_root: str | Path) -> list[RunResult]:
    """Every readable run under runs_root, newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = []
    for record in root.glob(f"*/{RECORD}"):
        try:
            runs.append(read_record(record))
        except (OSError, ValueError, TypeError):
            continue  # a run being created, or a folder that is not a run
    return sorted(runs, key=lambda r: r.started, reverse=True)


def load_run(runs_root: str | Path, run_id: str) -> RunResult:
    record = Path(runs_root) / run_id / RECORD
    if "/" in run_id or not record.is_file():
        raise LookupError(f"no run {run_id!r} under {runs_root}")
    return read_record(record)

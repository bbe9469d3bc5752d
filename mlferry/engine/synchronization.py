"""Argo's mutexes and semaphores as file locks, shared by every run on this machine.

Argo keys a lock by namespace and name (`<namespace>/Mutex/<name>`); here each key is a file in
a lock directory, held with flock(2). flock locks belong to an open file description, so two
threads of one process exclude each other as two processes do. A semaphore of limit N is N slot
files; holding any one of them is holding a slot.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping
from urllib.parse import quote

from mlferry.engine.expressions import substitute_all
from mlferry.engine.nodes import NodeError

if TYPE_CHECKING:
    from mlferry.engine.submission import Cluster

POLL_SECONDS = 0.05


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"mlferry-locks-{os.getuid()}"


@dataclass(frozen=True, order=True)
class Lock:
    """One mutex (limit 1) or semaphore (limit N), by the key Argo would give it."""

    key: str  # e.g. "default/Mutex/gitops"
    limit: int = 1

    def slot_files(self, lock_dir: Path) -> list[Path]:
        name = quote(self.key, safe="")
        if self.limit == 1:
            return [lock_dir / f"{name}.lock"]
        return [lock_dir / f"{name}.{i}.lock" for i in range(self.limit)]


def locks_for(sync: Mapping[str, Any] | None, scope: Mapping[str, str], namespace: str,
              cluster: "Cluster") -> list[Lock]:
    """The locks a `synchronization` block asks for; a semaphore's limit is read from its ConfigMap."""
    if not sync:
        return []
    sync = substitute_all(dict(sync), scope)
    out = []
    for m in list(sync.get("mutexes") or []) + ([sync["mutex"]] if "mutex" in sync else []):
        out.append(Lock(f"{m.get('namespace') or namespace}/Mutex/{m['name']}"))
    for s in list(sync.get("semaphores") or []) + ([sync["semaphore"]] if "semaphore" in sync else []):
        ref, ns = s["configMapKeyRef"], s.get("namespace") or namespace
        try:
            limit = int(cluster.lookup("ConfigMap", ref["name"], ref["key"], ns))
        except (LookupError, ValueError) as err:
            raise NodeError(f"semaphore {ref['name']}/{ref['key']}: {err}") from None
        out.append(Lock(f"{ns}/ConfigMap/{ref['name']}/{ref['key']}", max(limit, 1)))
    return out


class Interrupted(Exception):
    """Waiting for a lock was given up (deadline or cancel)."""


@contextmanager
def holding(locks: list[Lock], lock_dir: Path, *, stop: threading.Event,
            waiting: Callable[[Lock], None] = lambda _l: None) -> Iterator[None]:
    """Hold all `locks` (taken in a fixed order, so two runs never deadlock on each other)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for lock in sorted(set(locks)):
            stack.enter_context(_hold(lock, lock_dir, stop, waiting))
        yield


@contextmanager
def _hold(lock: Lock, lock_dir: Path, stop: threading.Event, waiting: Callable[[Lock], None]) -> Iterator[None]:
    files = [open(path, "a+") for path in lock.slot_files(lock_dir)]
    try:
        told = False
        while True:
            held = next((f for f in files if _try_lock(f)), None)
            if held is not None:
                break
            if not told:
                waiting(lock)
                told = True
            if stop.wait(POLL_SECONDS):
                raise Interrupted(f"gave up waiting for lock {lock.key}")
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    finally:
        for f in files:
            f.close()


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


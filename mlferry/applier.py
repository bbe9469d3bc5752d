"""The local applier: Argo CD and the kubelet for the `deployment` runtime, on a laptop.

It follows the GitOps branch (one `git ls-remote` a second, a shallow read of ``teams/`` when the
head moved) and, for each folder ``teams/<team>/<slug>/<env>/`` holding a ``deployment.yaml``, runs
that Deployment's container as a local process (mlferry.local_pod). What it runs, it reports the
way Argo CD reports an Application, into one status file (steps/local_status.py reads it), so the
verify step waits on the same three facts on a laptop as on a cluster: revision, sync, health.

A changed folder rolls out as a one-replica Deployment does by default (maxSurge 1,
maxUnavailable 0): the new server starts beside the old one, and the old one stops only once the
new one answers its probe. A new version that cannot start leaves the old one serving (and the
folder Degraded), which is what a rollback then finds. A removed folder's server stops.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from mlferry.local_pod import (DEGRADED, DEPLOYMENT_FILE, HEALTHY, KSERVE_FILE, ManifestError, Pod, annotation,
                               deployment_of, pod_spec)
from mlferry.stack.data import write_private
from mlferry.stack.processes import free_port
from mlferry.steps import gitops
from mlferry.steps.layout import folder_digest

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
SYNCED, OUT_OF_SYNC = "Synced", "OutOfSync"
KSERVE_NOTE = ("the local applier runs the deployment runtime only: this folder is a KServe InferenceService, "
               "which needs a cluster")


@dataclass
class Folder:
    """One GitOps folder as the applier runs it: the server that serves, and the one rolling out."""

    digest: str
    revision: str
    model: str = ""
    version: str = ""
    serving: Pod | None = None  # what the Service would route to
    rolling: Pod | None = None  # the new version, until it answers (then it serves)
    note: tuple[str, str, str] | None = None  # (sync, health, message) of a folder that runs nothing
    seen: tuple[str, str] | None = None  # (health, message) of the last pass: one probe a pass, not two

    def settle(self) -> None:
        """Observe the server once a pass; a rolling one that answers serves, and the one before it stops."""
        if self.note:
            return
        self.seen = (self.rolling or self.serving).observe()
        if self.rolling and self.seen[0] == HEALTHY:
            old, self.serving, self.rolling = self.serving, self.rolling, None
            if old:
                old.stop()

    def status(self) -> dict:
        if self.note:
            sync, health, message = self.note
            endpoint = ""
        else:
            health, message = self.seen or (self.rolling or self.serving).observe()
            sync = SYNCED
            # While a new version starts the old one still serves; a first one's address is shown at once.
            endpoint = (self.serving or self.rolling).endpoint
            if self.rolling and self.serving and health == DEGRADED:
                message += f"; the previous server still serves on {self.serving.endpoint}"
        return {"revision": self.revision, "sync": sync, "health": health, "message": message,
                "endpoint": endpoint, "version": self.version, "model": self.model}

    def pods(self) -> list[Pod]:
        return [p for p in (self.serving, self.rolling) if p]


@dataclass
class Applier:
    remote: str
    branch: str
    status_path: Path
    environ: Mapping[str, str]
    head: str = ""
    error: str = ""  # why the remote could not be read, "" when it could
    folders: dict[str, Folder] = field(default_factory=dict)
    _written: str = ""

    @property
    def workdir(self) -> Path:
        """Beside the status file: each folder's server log and its pods' scratch folders."""
        return self.status_path.parent

    # -- one pass ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Look at the remote, apply a new head, settle rollouts, write the status if it changed."""
        try:
            head = gitops.remote_head(self.remote, self.branch, environ=self.environ)
            if head != self.head:
                snapshot = gitops.read_snapshot(self.remote, self.branch, "teams/", environ=self.environ)
                self.apply(snapshot.sha, snapshot.folders(depth=4))
            self.error = ""
        except gitops.GitOpsError as err:  # keep serving what runs; say why nothing new is applied
            self.error = str(err).splitlines()[0]
        for folder in self.folders.values():
            folder.settle()
        self.write_status()

    def apply(self, head: str, folders: Mapping[str, Mapping[str, str]]) -> None:
        """Make what runs match the folders at `head`; every folder's revision becomes `head`."""
        wanted = {path: files for path, files in folders.items() if DEPLOYMENT_FILE in files or KSERVE_FILE in files}
        for path in sorted(set(self.folders) - set(wanted)):
            log.info("%s removed at %s: stopping its server", path, head[:12])
            _stop_all(self.folders.pop(path).pods())
        for path, files in sorted(wanted.items()):
            digest, there = folder_digest(files), self.folders.get(path)
            if there is None or there.digest != digest:
                self.folders[path] = self._roll_out(path, files, digest, head, there)
            self.folders[path].revision = head
        self.head = head

    def _roll_out(self, path: str, files: Mapping[str, str], digest: str, head: str, before: Folder | None) -> Folder:
        serving = before.serving if before else None
        if before and before.rolling:  # superseded before it answered, as a newer ReplicaSet replaces it
            before.rolling.stop()
        folder = Folder(digest=digest, revision=head, serving=serving)
        if KSERVE_FILE in files and DEPLOYMENT_FILE not in files:
            _stop_all([serving] if serving else [])
            folder.serving, folder.note = None, (OUT_OF_SYNC, "Unknown", KSERVE_NOTE)
            return folder
        try:
            deployment = deployment_of(files)
            folder.model = annotation(deployment, "mlferry.io/model-name")
            folder.version = annotation(deployment, "mlferry.io/version")
            name = re.sub(r"[^a-z0-9-]+", "_", path.removeprefix("teams/"))
            port = free_port()
            spec = pod_spec(deployment, port, self.workdir / "pods" / f"{name}-{port}", self.environ)
            folder.rolling = Pod.start(spec, self.workdir / "logs" / f"{name}.log")
            log.info("%s at %s: v%s starting on %s", path, head[:12], folder.version, folder.rolling.endpoint)
        except (ManifestError, OSError, LookupError, TypeError, AttributeError) as err:
            # A folder that cannot run (a hand-edited manifest, a missing key) is reported, never
            # allowed to stop the applier serving the others.
            err = err if isinstance(err, ManifestError) else f"cannot run {DEPLOYMENT_FILE}: {err!r}"
            folder.note = (SYNCED, DEGRADED, str(err))
            if serving:
                folder.note = (SYNCED, DEGRADED, f"{err}; the previous server still serves on {serving.endpoint}")
        return folder

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        found = {"remote": gitops.display_url(self.remote), "branch": self.branch, "head": self.head,
                 "pid": os.getpid(), "folders": {path: f.status() for path, f in sorted(self.folders.items())}}
        return {**found, "error": self.error} if self.error else found

    def write_status(self) -> None:
        """Atomically (a reader never sees half a file), and only when something changed."""
        content = self.status()
        text = json.dumps(content, sort_keys=True)
        if text == self._written:
            return
        content["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        write_private(tmp, json.dumps(content, indent=2) + "\n")
        tmp.replace(self.status_path)
        self._written = text

    def shutdown(self) -> None:
        """Stop every server it started, and say so by removing the status file."""
        _stop_all([p for f in self.folders.values() for p in f.pods()])
        self.folders.clear()
        self.status_path.unlink(missing_ok=True)


def _stop_all(pods: list[Pod]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(pods))) as pool:
        list(pool.map(Pod.stop, pods))


def run(applier: Applier, stop: threading.Event, poll: float = POLL_SECONDS,
        on_tick: Callable[[Applier], None] | None = None) -> None:
    """Follow the remote until `stop` is set; then stop every server (also on an exception)."""
    try:
        while not stop.is_set():
            applier.tick()
            if on_tick:
                on_tick(applier)
            stop.wait(poll)
    finally:
        applier.shutdown()


def serve_forever(applier: Applier) -> int:
    """`mlferry applier`: run in the foreground until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("following %s %s; status in %s", gitops.display_url(applier.remote), applier.branch,
             applier.status_path)
    run(applier, stop)
    log.info("stopped every server it started")
    return 0


"""The local applier's status file as a status source: what `verify: local` and `mlferry status` read.

The local applier (mlferry/applier.py) plays Argo CD and the kubelet on a laptop and writes, per
GitOps folder, what Argo CD's Application would say into one JSON file (written whole, then
renamed, so a reader never sees half of it):

    {"remote": ..., "branch": ..., "head": "<sha>", "updated_at": "...", "pid": <applier pid>,
     "folders": {"teams/ml/x/staging": {"revision": "<sha>", "sync": "Synced", "health": "Healthy",
                                        "message": "...", "endpoint": "http://127.0.0.1:PORT",
                                        "version": "3", "model": "x"}}}

The file is where MLFERRY_APPLIER_STATUS says, else ``<stack dir>/applier/status.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from mlferry.steps.deploy_status import DeployStatus
from mlferry.steps.settings import Settings

STATUS_ENV = "MLFERRY_APPLIER_STATUS"
STATUS_FILE = Path("applier") / "status.json"  # under the stack folder, unless STATUS_ENV says otherwise
START_HINT = "start it with `mlferry applier` (foreground) or `mlferry stack up --applier`"


def default_status_path(environ: Mapping[str, str], stack_dir: str | Path | None = None) -> Path:
    """Where the applier writes and readers look: $MLFERRY_APPLIER_STATUS, else the stack folder's file
    (`stack_dir`, else $MLFERRY_STACK_DIR, else ./.mlferry, as the CLI's default)."""
    if environ.get(STATUS_ENV):
        return Path(environ[STATUS_ENV])
    return Path(stack_dir or environ.get("MLFERRY_STACK_DIR") or ".mlferry").resolve() / STATUS_FILE


class LocalSource:
    """What the local applier says a folder runs."""

    name = "local"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def read(self, folder: str) -> DeployStatus:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return DeployStatus(sync="Unknown", health="Missing",
                                message=f"the local applier is not running (no {self.path}); {START_HINT}")
        return folder_status(json.loads(text), folder, self.path)


def folder_status(status: Mapping, folder: str, path: Path | str = "the status file") -> DeployStatus:
    """One folder's DeployStatus from the file's content (no I/O but the liveness of the applier's pid)."""
    pid = status.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        # Killed without cleaning up: what the file says was true then, not now.
        return DeployStatus(sync="Unknown", health="Missing",
                            message=f"the local applier (pid {pid}) that wrote {path} is not running; {START_HINT}")
    found = status.get("folders", {}).get(folder)
    if found is None:
        head = str(status.get("head", ""))[:12] or "no commit"
        return DeployStatus(sync="OutOfSync", health="Missing",
                            message=f"the local applier has no {folder} at {status.get('branch', '?')}@{head}")
    return DeployStatus(revision=found.get("revision", ""), sync=found.get("sync", "Unknown"),
                        health=found.get("health", "Unknown"), message=found.get("message", ""),
                        endpoint=found.get("endpoint", ""))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def local_source(settings: Settings, environ: Mapping[str, str] | None = None) -> LocalSource:
    """The source for `verify: local` (steps/deploy_status.py's status_source asks for it)."""
    return LocalSource(default_status_path(os.environ if environ is None else environ))

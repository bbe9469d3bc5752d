"""The one place mlferry runs ``git``: in a clean environment, with a deadline, and with every
failure turned into a word of the taxonomy in :mod:`.errors`.

The caller's environment is always passed explicitly (so a test or a step decides what git
sees), minus anything that would point git at another repository, plus the remote's
credentials. ``GIT_TERMINAL_PROMPT=0`` and ssh ``BatchMode`` make a missing credential fail
instead of hanging.
"""

from __future__ import annotations

import collections
import logging
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping

from mlferry.steps.gitops.credentials import Remote, redact
from mlferry.steps.gitops.errors import GitOpsError, classify

logger = logging.getLogger(__name__)

GIT_TIMEOUT = 600.0  # seconds for one git command: a stuck network must not hang a workflow
PROGRESS_INTERVAL = 5.0  # seconds between progress lines in the log

# Variables that would point git at another repository, index or configuration: a step run
# from inside a git hook, or by a user with GIT_DIR exported, must still act on its own clone.
_INHERITED_GIT_STATE = re.compile(
    r"^(GIT_(DIR|WORK_TREE|INDEX_FILE|OBJECT_DIRECTORY|ALTERNATE_OBJECT_DIRECTORIES|COMMON_DIR|"
    r"NAMESPACE|PREFIX|SHALLOW_FILE|REPLACE_REF_BASE|GRAFT_FILE|NO_REPLACE_OBJECTS|CONFIG|"
    r"CONFIG_PARAMETERS|CONFIG_COUNT|CONFIG_KEY_\d+|CONFIG_VALUE_\d+)|MLFERRY_GIT_.*)$"
)


def git_environment(remote: Remote | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment minus anything pointing git elsewhere, plus the remote's auth;
    never interactive, so a missing credential fails instead of hanging."""
    env = {k: v for k, v in environ.items() if not _INHERITED_GIT_STATE.match(k)}
    env.update(remote.env if remote else {})
    env.update(LC_ALL="C", LANGUAGE="C", GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never",
               SSH_ASKPASS_REQUIRE="never", GIT_LITERAL_PATHSPECS="1")
    return env


class Git:
    """git in one repository, with the remote's credentials in the environment and nowhere else.

    ``remote`` is None for a repository that talks to no remote (the local stack's own repo).
    """

    def __init__(self, root: Path, environ: Mapping[str, str], remote: Remote | None = None):
        self.root, self.remote = root, remote
        self.env = git_environment(remote, environ)
        self.display = remote.display if remote else str(root)

    def run(self, *args: str, action: str, stdin: bytes = b"", cwd: Path | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> str:
        return self.run_raw(*args, action=action, stdin=stdin, cwd=cwd, ok_codes=ok_codes).decode(
            errors="replace").strip()

    def run_raw(self, *args: str, action: str, stdin: bytes = b"", cwd: Path | None = None,
                ok_codes: tuple[int, ...] = (0,)) -> bytes:
        """git's output as bytes (object contents are not text)."""
        try:
            done = subprocess.run(["git", *args], cwd=cwd or self.root, input=stdin, capture_output=True,
                                  env=self.env, timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self.failure(action, f"git {args[0]} timed out after {GIT_TIMEOUT:.0f}s") from None
        if done.returncode not in ok_codes:
            raise self.failure(action, done.stderr.decode(errors="replace"), done.stdout.decode(errors="replace"))
        return done.stdout

    def succeeds(self, *args: str) -> bool:
        """Whether the command exits 0: for questions git answers with its exit code."""
        try:
            self.run_raw(*args, action="ask git")
        except GitOpsError:
            return False
        return True

    def run_with_progress(self, *args: str, action: str, cwd: Path | None = None) -> str:
        """A network command whose --progress lines are logged, throttled, as they come."""
        proc = subprocess.Popen(["git", *args], cwd=cwd or self.root, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout: list[bytes] = []
        reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)
        reader.start()
        timed_out = threading.Event()
        killer = threading.Timer(GIT_TIMEOUT, lambda: (timed_out.set(), proc.kill()))
        killer.start()
        try:
            lines = collections.deque(self._log_progress(proc.stderr), maxlen=40)  # the tail explains failures
            proc.wait()
            reader.join()
        finally:
            killer.cancel()
        out = b"".join(stdout).decode(errors="replace")
        if timed_out.is_set():
            raise self.failure(action, f"git {args[0]} timed out after {GIT_TIMEOUT:.0f}s", out)
        if proc.returncode != 0:
            raise self.failure(action, "\n".join(lines), out)
        return self.redact(out).strip()

    def stream(self, *args: str, action: str) -> Iterator[bytes]:
        """git's output in chunks as it comes; a caller that stops reading ends git there."""
        proc = subprocess.Popen(["git", *args], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while chunk := proc.stdout.read1(65536):
                yield chunk
        finally:  # also when the caller had enough and stopped reading
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise self.failure(action, err.decode(errors="replace"))

    def failure(self, action: str, stderr: str, stdout: str = "") -> GitOpsError:
        """The taxonomy's word for this failure, with git's output redacted."""
        where = self.remote.where if self.remote else f"git in {self.root}"
        return classify(action, self.redact(stderr), self.redact(stdout), where=where,
                        ssh_key=self.remote.ssh_key if self.remote else "")

    def _log_progress(self, stream) -> Iterator[str]:
        """git's lines as they come; a long transfer shows up in the log every few seconds."""
        started = last = time.monotonic()
        buffer = b""
        while chunk := stream.read1(4096):
            *complete, buffer = re.split(rb"[\r\n]", buffer + chunk)
            for raw in complete:
                line = self.redact(raw.decode(errors="replace").strip())
                if not line:
                    continue
                yield line
                now = time.monotonic()
                long_running = now - started >= PROGRESS_INTERVAL
                if "filtering not recognized" in line:  # slower, same result: say why
                    logger.info("%s: %s (the server does not allow blobless clones: set uploadpack.allowFilter "
                                "on it to fetch no file contents)", self.display, line)
                elif long_running and (line.endswith("done.") or now - last >= PROGRESS_INTERVAL):
                    last = now
                    logger.info("%s: %s", self.display, line)
                else:
                    logger.debug("%s: %s", self.display, line)
        if buffer.strip():
            yield self.redact(buffer.decode(errors="replace").strip())

    def redact(self, text: str) -> str:
        return redact(text, self.remote.secrets if self.remote else ())

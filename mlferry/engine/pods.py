"""One attempt of a script or container template, run as a local process instead of a pod.

What Argo's executor does around the main container is done here the same way: the script
source is written to a file appended to the arguments (workflow/controller/operator.go,
executeScript), stdout becomes `outputs.result` less one trailing newline and capped at 256 kB
(workflow/executor, CaptureScriptResult), output parameters are read from their files with
`valueFrom.default` when a file is missing (SaveParameters), and a deadline kills the process
group as the kubelet kills a pod past activeDeadlineSeconds.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

from mlferry.engine.expressions import substitute
from mlferry.engine.runs import ERROR, FAILED, SUCCEEDED
from mlferry.engine.warm import WarmProcess, WarmServer

MAX_RESULT_BYTES = 256 * 1024
MESSAGE_LINES = 5
POLL_SECONDS = 0.05


class Stop(threading.Event):
    """Set once, with the reason every process it stops reports (deadline, interrupt)."""

    reason: str = ""

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@dataclass(frozen=True)
class Pod:
    name: str
    argv: list[str]
    env: Mapping[str, str]
    cwd: Path
    log: Path
    outputs: Mapping[str, tuple[Path, str | None]] = field(default_factory=dict)  # name -> (file, default)
    script: tuple[Path, str] | None = None  # (file, source) written before start
    deadline: float | None = None  # time.monotonic()
    deadline_message: str = "deadline exceeded"


@dataclass(frozen=True)
class PodResult:
    phase: str
    message: str = ""
    exit_code: int | None = None
    result: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def pod_deadline(t: Mapping[str, Any], scope: Mapping[str, str], retry_deadline: float | None) -> tuple[float | None, str]:
    """When the pod must be killed, and what it then reports: the template's activeDeadlineSeconds,
    counted from now, or retryStrategy's maxDuration, whichever comes first."""
    seconds = t.get("activeDeadlineSeconds")
    candidates = []
    if seconds is not None:
        seconds = int(substitute(str(seconds), scope))
        candidates.append((time.monotonic() + seconds, f"deadline exceeded (activeDeadlineSeconds {seconds})"))
    if retry_deadline is not None:
        candidates.append((retry_deadline, "deadline exceeded (retryStrategy.backoff.maxDuration)"))
    return min(candidates) if candidates else (None, "")


def run_pod(pod: Pod, stop: Stop, *, kill_grace: float = 2.0, warm: WarmServer | None = None) -> PodResult:
    """Run one attempt to its end; `warm` forks a Hera runner call instead of starting it cold."""
    if pod.script is not None:
        pod.script[0].parent.mkdir(parents=True, exist_ok=True)
        pod.script[0].write_text(pod.script[1])
        pod.script[0].chmod(0o755)  # executable, so `command: [sh, -c]` can run it (executor.go, StageFiles)
    pod.log.parent.mkdir(parents=True, exist_ok=True)
    with open(pod.log, "a", encoding="utf-8") as log:
        try:
            executable = look_path(pod.argv[0], pod.env.get("PATH", os.defpath))
            proc = _start(pod, executable, warm)
        except CannotStart as err:
            return _cannot_start(log, f"failed to find name in PATH: {err}")
        except OSError as err:  # found, yet the kernel would not run it (no shebang, not a binary…)
            return _cannot_start(log, f"failed to start command: fork/exec {executable}: {_errno_words(err)}")
        streams = _Streams(proc, log)
        try:
            why_killed = _wait(proc, pod, stop, kill_grace)
        except BaseException:  # e.g. KeyboardInterrupt: never leave the process group behind
            _kill(proc, kill_grace)
            raise
        # The step ends with its main process, as a container does: what it left running in the
        # background is killed, and its output so far is kept (emissary.go waits on the process,
        # not on its output).
        _kill_group(proc.pid)
        streams.join(timeout=kill_grace)
    return _result(pod, proc.returncode, streams, why_killed)


def _start(pod: Pod, executable: str, warm: WarmServer | None) -> subprocess.Popen | WarmProcess:
    if warm is not None and warm.serves(pod.argv, pod.env, str(pod.cwd)):
        try:
            return warm.start(pod.argv, pod.env, str(pod.cwd))
        except OSError:
            pass  # the server is gone: this pod starts cold, as every pod did before
    return subprocess.Popen(pod.argv, executable=executable, cwd=pod.cwd, env=dict(pod.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


# Argo's emissary exits 64 when the main command cannot start (cmd/argoexec/commands/emissary.go).
CANNOT_START_EXIT_CODE = 64


class CannotStart(OSError):
    """The command is not an executable file, in the words of Go's exec.LookPath."""


def look_path(name: str, path: str) -> str:
    """The file `name` runs, found as Go's exec.LookPath finds it: a name with a slash is the file
    itself, any other is searched in the container's PATH (os/exec, lp_unix.go)."""
    if "/" in name:
        problem = _not_executable(name)
        if problem:
            raise CannotStart(f'exec: "{name}": {problem}')
        return name
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if not _not_executable(candidate):
            return candidate
    raise CannotStart(f'exec: "{name}": executable file not found in $PATH')


def _not_executable(file: str) -> str:
    """Why `file` cannot be executed (lp_unix.go, findExecutable), or "" when it can."""
    try:
        mode = os.stat(file).st_mode
    except OSError as err:
        return f"stat {file}: {_errno_words(err)}"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not mode & 0o111:
        return "permission denied"
    return ""


def _errno_words(err: OSError) -> str:
    """An errno as Go's syscall.Errno prints it: "no such file or directory", "exec format error"."""
    words = err.strerror or str(err)
    return words[:1].lower() + words[1:]


def _cannot_start(log: IO[str], message: str) -> PodResult:
    log.write(message + "\n")
    # A Failed node, not an Error: the container ran and exited non-zero (invalid_command_test.go).
    return PodResult(FAILED, message, exit_code=CANNOT_START_EXIT_CODE)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


def _wait(proc: subprocess.Popen | WarmProcess, pod: Pod, stop: Stop, kill_grace: float) -> str:
    """Wait for the process; kill its group at the deadline or on stop, and say why."""
    while True:
        try:
            proc.wait(timeout=POLL_SECONDS)
            return ""
        except subprocess.TimeoutExpired:
            pass
        if pod.deadline is not None and time.monotonic() >= pod.deadline:
            _kill(proc, kill_grace)
            return pod.deadline_message
        if stop.is_set():
            _kill(proc, kill_grace)
            return stop.reason


def _kill(proc: subprocess.Popen | WarmProcess, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Streams:
    """Copies stdout and stderr to the log as they come, keeping stdout and stderr's tail."""

    def __init__(self, proc: subprocess.Popen | WarmProcess, log: IO[str]):
        self.log, self.lock = log, threading.Lock()
        self.stdout: list[bytes] = []
        self.stderr_tail: deque[str] = deque(maxlen=50)
        self.threads = [threading.Thread(target=self._copy, args=(proc.stdout, True), daemon=True),
                        threading.Thread(target=self._copy, args=(proc.stderr, False), daemon=True)]
        for t in self.threads:
            t.start()

    def _copy(self, stream: IO[bytes], is_stdout: bool) -> None:
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", errors="replace")
            with self.lock:
                try:
                    self.log.write(text if text.endswith("\n") else text + "\n")
                    self.log.flush()
                except ValueError:  # the log is closed: the step ended, a stray holder of the pipe wrote on
                    break
            if is_stdout:
                self.stdout.append(line)
            else:
                self.stderr_tail.append(text.rstrip("\n"))
        stream.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait for both streams to end; a process that left the group (setsid) may hold one
        open past the step's end, and is not waited for longer than `timeout`."""
        for t in self.threads:
            t.join(timeout)

    def result(self) -> str:
        out = b"".join(self.stdout)
        if out.endswith(b"\n"):  # Argo trims one trailing newline "for user convenience"
            out = out[:-1]
        return out[-MAX_RESULT_BYTES:].decode("utf-8", errors="replace")

    def last_lines(self) -> str:
        lines = [line for line in self.stderr_tail if line.strip()]
        return "\n".join(lines[-MESSAGE_LINES:])


def _result(pod: Pod, returncode: int, streams: _Streams, why_killed: str) -> PodResult:
    code = 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128+N, as in k8s
    outputs, missing = _read_outputs(pod.outputs)
    base = dict(exit_code=code, result=streams.result(), outputs=outputs)
    if why_killed:
        return PodResult(FAILED, why_killed, **base)
    if code != 0:
        tail = streams.last_lines()
        return PodResult(FAILED, f"Error (exit code {code})" + (f": {tail}" if tail else ""), **base)
    if missing:
        return PodResult(ERROR, "; ".join(missing), **base)
    return PodResult(SUCCEEDED, **base)


def _read_outputs(outputs: Mapping[str, tuple[Path, str | None]]) -> tuple[dict[str, str], list[str]]:
    values, missing = {}, []
    for name, (path, default) in outputs.items():
        try:
            values[name] = path.read_text()
        except OSError as err:
            if default is not None:
                values[name] = default
            else:
                missing.append(f"output parameter {name}: {err.strerror}: {path}")
    return values, missing

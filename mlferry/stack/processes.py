"""The stack's server processes: start on a free loopback port, wait until they answer, stop
exactly what was started (by pid and command line, so a reused pid is never killed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT = 90.0


class StackError(RuntimeError):
    """A part of the stack could not start or stop; the message says which and what to do."""


@dataclass
class Part:
    name: str
    port: int
    pid: int = 0
    cmd: list[str] = field(default_factory=list)
    log: str = ""
    # A part that listens on no port (the local applier) is ready once it has written this file.
    ready_file: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def where(self) -> str:
        """Where it answers: its URL, or the file a part without a port writes once ready."""
        return self.ready_file or self.url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_port_free(name: str, port: int) -> None:
    if not port_free(port):
        raise StackError(
            f"cannot start {name}: port {port} on 127.0.0.1 is taken by another process; "
            f"stop it or choose another port with --{name}-port"
        )


def _health_url(part: Part) -> str:
    return f"{part.url}/health" if part.name == "mlflow" else f"{part.url}/moto-api/"


def answers(part: Part) -> bool:
    if part.ready_file:
        return Path(part.ready_file).exists()
    try:
        with urllib.request.urlopen(_health_url(part), timeout=2) as resp:
            return resp.status < 500
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(part: Part, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{part.name} exited with code {proc.returncode} while starting; "
                             f"last lines of {part.log}:\n{tail(part.log)}")
        if answers(part):
            return
        time.sleep(0.3)
    stop(part)
    raise StackError(f"{part.name} did not answer on {part.where} within {READY_TIMEOUT:.0f}s; "
                     f"last lines of {part.log}:\n{tail(part.log)}")


def tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def alive(part: Part) -> bool:
    """True when the pid still runs the command we started (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{part.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [c.decode(errors="replace") for c in cmdline if c] == part.cmd


def stop(part: Part, timeout: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(part.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(part.pid):
                _reap(part.pid)
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group? Zombies of our own children are reaped."""
    _reap(pgid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_part(part: Part, timeout: float = 10.0) -> str:
    if not alive(part):
        return "was not running"
    stop(part, timeout)
    return f"stopped (pid {part.pid})"

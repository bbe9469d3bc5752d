"""Warm starts for Hera runner pods: each `python -m hera.workflows.runner -e M:F ARGS` task of a
run is forked from a process that has already imported Hera, instead of a new interpreter paying
about a second to import it again.

What a fresh process would have, the fork gets: its own session and process group (so deadlines
and stops kill it as before), the pod's stdin/stdout/stderr, environment, working folder,
`sys.argv` and `sys.path[0]` as `python -m` sets them, the runner module run as `__main__`, and
its exit code, or the signal that killed it, as the return code. What an exit does for the step
happens as in any exit: non-daemon threads are waited for, atexit handlers run (logging's flush,
temporary folders' cleanup), stdio is flushed; then the child leaves with os._exit, skipping the
interpreter's teardown of the heap it inherited (0.2-0.25 s a step on this machine, freeing memory
the kernel frees anyway). What it shares with its siblings is only what
was imported before the fork: Hera, and the run's own `mlferry.*` step modules, which read no
environment at import (tests/test_warm_starts.py checks this and compares both ways).

Anything else (another command, another interpreter, a PYTHON* variable that differs from the
server's) starts cold, as before. `MLFERRY_WARM_STEPS=0` turns warm starts off.

The protocol, on one Unix socket pair per run: the executor sends a JSON request with four file
descriptors (a reply socket, stdin, stdout, stderr); the server forks, answers `{"pid": N}` on the
reply socket, and `{"returncode": N}` once the child has ended (the server reaps its children).
"""

from __future__ import annotations

import array
import errno
import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from typing import IO, Any, Iterable, Mapping, Sequence

RUNNER = "hera.workflows.runner"
PRELOADED_PREFIX = "mlferry."  # entry modules imported before forking: ours, which read no environment at import
_FDS_PER_REQUEST = 4
_MAX_MESSAGE = 1 << 20


def warm_enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("MLFERRY_WARM_STEPS", "1") != "0"


def runner_call(argv: Sequence[str], python: str) -> bool:
    """Whether argv is the Hera runner started by this machine's interpreter."""
    return len(argv) >= 3 and argv[0] == python and list(argv[1:3]) == ["-m", RUNNER]


def entry_modules(templates: Iterable[Mapping[str, Any]]) -> list[str]:
    """The `-e module:function` modules of the templates' runner calls that a server may import ahead."""
    found = []
    for t in templates:
        body = t.get("script") or t.get("container") or {}
        argv = [str(a) for a in [*(body.get("command") or []), *(body.get("args") or [])]]
        for flag, value in zip(argv, argv[1:]):
            if flag in ("-e", "--entrypoint") and ":" in value:
                module = value.split(":", 1)[0]
                if module.startswith(PRELOADED_PREFIX) and module not in found:
                    found.append(module)
    return found


def _interpreter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that change how an interpreter starts (sys.path, flags, hashing)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


_STARTUP_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV")


def server_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a shared server starts with: what starting Python and importing needs, nothing else.

    Each child gets its pod's own environment; what the server started with only stays readable in
    /proc/<pid>/environ of it and of every child, so it holds no Secret, token or password (and
    needs no templates to tell which variables those are, so it can start before they are built).
    """
    return {k: v for k, v in env.items()
            if k in _STARTUP_VARIABLES or k.startswith(("LC_", "PYTHON"))}


# -- the executor's side -------------------------------------------------------------------------

class WarmServer:
    """A run's server, started in the run's working folder with its base environment; or, with
    `any_cwd`, a long-lived process's, shared by runs that each work in their own folder (the child
    moves to the pod's folder and puts it first on sys.path; the modules imported ahead are
    installed ones, found the same from any folder)."""

    def __init__(self, python: str, cwd: str, env: Mapping[str, str], preload: Sequence[str] = (), *,
                 any_cwd: bool = False):
        self.python, self.cwd, self.env, self.any_cwd = python, cwd, dict(env), any_cwd
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.send_lock = threading.Lock()
        self.preloaded = set(preload)  # the step modules this server was asked to import ahead
        self.proc = subprocess.Popen([python, "-m", __name__, str(theirs.fileno()), *preload], cwd=cwd,
                                     env=self.env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        theirs.close()

    def preload(self, modules: Sequence[str]) -> None:
        """More step modules to import ahead, between requests (a server started before the
        templates that name them were built); a module it was asked for before is not sent again."""
        with self.send_lock:
            new = [m for m in modules if m not in self.preloaded]
            if not new:
                return
            self.preloaded.update(new)
            request = json.dumps({"preload": new}).encode()
            try:
                self.control.sendall(len(request).to_bytes(4, "big") + request)
            except OSError:
                pass  # a server that is gone: its runs start cold

    def serves(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bool:
        return (runner_call(argv, self.python) and (self.any_cwd or cwd == self.cwd) and self.proc.poll() is None
                and _interpreter_env(env) == _interpreter_env(self.env))

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> "WarmProcess":
        """Like subprocess.Popen(argv, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE, start_new_session=True)."""
        mine, reply = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        try:
            try:
                request = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode()
                fds = array.array("i", [reply.fileno(), stdin, out_w, err_w])
                with self.send_lock:
                    self.control.sendmsg([len(request).to_bytes(4, "big") + request],
                                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            finally:  # before waiting: a server that dies now must leave us reading an end of file
                for fd in (stdin, out_w, err_w):
                    os.close(fd)
                reply.close()
            answer = _read_json(mine)
            if "pid" not in answer:
                raise OSError(errno.ECHILD, "the warm server is gone")
        except OSError:  # the caller starts the process cold
            for fd in (out_r, err_r):
                os.close(fd)
            mine.close()
            raise
        return WarmProcess(answer["pid"], mine, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"), argv)

    def close(self) -> None:
        self.control.close()  # the server ends when it reads the end of its socket
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WarmProcess:
    """The parts of subprocess.Popen that the executor uses, for a process the server forked."""

    def __init__(self, pid: int, reply: socket.socket, stdout: IO[bytes], stderr: IO[bytes], args: Sequence[str]):
        self.pid, self.args, self.stdout, self.stderr = pid, list(args), stdout, stderr
        self.returncode: int | None = None
        self._reply = reply

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.wait(timeout=0)
            except subprocess.TimeoutExpired:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self._reply.settimeout(timeout)
        try:
            answer = _read_json(self._reply)
        except (socket.timeout, BlockingIOError):
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        self.returncode = int(answer.get("returncode", -signal.SIGKILL))
        self._reply.close()
        return self.returncode


def _read_json(sock: socket.socket) -> dict:
    """One length-prefixed JSON message; {} when the other side closed first."""
    header = _read_exactly(sock, 4)
    body = _read_exactly(sock, int.from_bytes(header, "big")) if header else b""
    return json.loads(body) if body else {}


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _send_json(sock: socket.socket, value: dict) -> None:
    data = json.dumps(value).encode()
    try:
        sock.sendall(len(data).to_bytes(4, "big") + data)
    except OSError:
        pass  # the executor stopped listening for this process


# -- the server's side ---------------------------------------------------------------------------

def serve(control: socket.socket, preload: Sequence[str]) -> None:
    """Import Hera, then fork a runner per request until the control socket closes.

    The step modules in `preload` are imported between requests, never ahead of one: a run's
    first step (reconcile's plan, a promotion's verify-event) is forked as soon as Hera is in and
    imports just its own module, instead of waiting for every other step's (render's Jinja2 and
    schemas, publish's boto3: a second and more), which the server imports while it runs.
    """
    import hera.workflows.runner  # noqa: F401  the second of import time this server exists to save

    pending = list(preload)
    children: dict[int, socket.socket] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        ready = selector.select(timeout=0 if pending else None)
        if not ready and pending:  # nothing asked for: import the next step module ahead
            _import_ahead(pending.pop(0))
            continue
        for key, _ in ready:
            if key.data == "child":
                os.read(wake_r, 4096)
            elif not _handle_request(control, children, [wake_r, wake_w], selector, pending):
                os._exit(0)  # the run is over; its children are on their own, and nothing needs a clean shutdown
        _reap(children)


def _import_ahead(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001  the child imports it again and fails in its own log
        pass


def _handle_request(control: socket.socket, children: dict[int, socket.socket], own_fds: list[int],
                    selector: selectors.BaseSelector, pending: list[str]) -> bool:
    header, fds = _receive(control, 4)
    if not header:
        return False  # the executor closed the socket: the run is over
    body, more = _receive(control, int.from_bytes(header, "big"))
    fds += more
    request = json.loads(body) if body else {}
    if not fds and isinstance(request.get("preload"), list):
        pending.extend(m for m in request["preload"] if isinstance(m, str) and m.startswith(PRELOADED_PREFIX))
        return True
    if len(fds) != _FDS_PER_REQUEST:
        for fd in fds:
            os.close(fd)
        return True
    reply = socket.socket(fileno=fds[0])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The child keeps only its stdio: not the server's sockets, nor its siblings' reply sockets.
        selector.close()
        _child(request, fds[1:], own_fds, [reply, control, *children.values()])
    for fd in fds[1:]:
        os.close(fd)
    children[pid] = reply
    _send_json(reply, {"pid": pid})
    return True


def _receive(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    data, fds = b"", []
    while len(data) < size:
        chunk, ancillary, _flags, _addr = sock.recvmsg(size - len(data), socket.CMSG_SPACE(_FDS_PER_REQUEST * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[: len(payload) - len(payload) % 4]).tolist()
        if not chunk:
            return b"", fds
        data += chunk
    return data, fds


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = children.pop(pid, None)
        if reply is not None:
            _send_json(reply, {"returncode": os.waitstatus_to_exitcode(status)})
            reply.close()


def _child(request: dict, stdio: list[int], close: list[int], sockets: list[socket.socket]) -> None:
    """Become the pod's process: never returns; the interpreter exits with the runner's code."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # Detached first: a socket object closed later (as the server's frames unwind at exit)
        # would close whatever file of the step has reused its number by then.
        for fd in [*stdio, *close, *(s.detach() for s in sockets)]:
            try:
                os.close(fd)
            except OSError:
                pass
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        # As `python -m`: argv[0] is the module's file, sys.path[0] the working folder.
        import runpy

        spec = importlib.util.find_spec(RUNNER)
        sys.argv = [spec.origin if spec and spec.origin else RUNNER, *argv[3:]]
        sys.path[0] = os.getcwd()
        # As `python -m` finds it: imported as a package's module it is only the server's; left in
        # sys.modules, runpy would warn in every step's log that a pod's never shows.
        sys.modules.pop(RUNNER, None)
    except BaseException:  # noqa: BLE001  a child that cannot become the pod must not serve on
        os._exit(70)
    try:
        runpy.run_module(RUNNER, run_name="__main__", alter_sys=True)
        code = 0  # the runner returned
    except SystemExit as exit:
        code = _exit_code(exit.code)
    # Anything else unwinds as in any process: the interpreter prints it and exits 1, the slow way.
    _leave(code)


def _exit_code(code: object) -> int:
    """sys.exit's argument as the interpreter turns it into a status: None is 0, a number is itself,
    anything else is printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001  as the interpreter, which ignores a failure to print it
        pass
    return 1


def _leave(code: int) -> None:
    """Exit as the interpreter would, without tearing down the heap: wait for non-daemon threads,
    run the atexit handlers, flush stdio, then os._exit."""
    threading_module = sys.modules.get("threading")
    if threading_module is not None:
        threading_module._shutdown()  # what the interpreter's own shutdown calls first
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  a closed or broken stream: nothing more to write
            pass
    os._exit(code)


def main(args: Sequence[str]) -> None:
    control = socket.socket(fileno=int(args[0]))
    serve(control, args[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

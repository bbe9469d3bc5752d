"""Warm starts (engine.warm) change how fast a Hera runner task starts, nothing else: the same task
run forked from the warm server and run as a new process sees the same environment, working
folder, argv and sys.path, and ends with the same outputs, exit codes, messages and deadlines.
"""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import pytest
from hera.workflows import DAG, WorkflowTemplate

from mlferry.engine import load, new_run_dir, run
from tests.executor_steps import describe

REPO = Path(__file__).resolve().parents[1]
STEPS = REPO / "steps"


def run_describe(tmp_path: Path, warm: bool, mode: str = "ok", seconds: float = 0.0, deadline: int | None = None):
    with WorkflowTemplate(name="probe", entrypoint="main") as wt:
        with DAG(name="main"):
            describe(arguments={"mode": mode, "seconds": str(seconds)})
    doc = wt.to_dict()
    template = next(t for t in doc["spec"]["templates"] if t["name"] == "describe")
    template["script"]["env"] = [*template["script"].get("env", []), {"name": "PROBE_FROM_TEMPLATE", "value": "yes"}]
    if deadline is not None:
        template["activeDeadlineSeconds"] = deadline
    env = {**os.environ, "PROBE_BASE": "base", "MLFERRY_WARM_STEPS": "1" if warm else "0"}
    folder = tmp_path / ("warm" if warm else "cold")
    plan = load(doc)
    return run(plan, {}, run_dir=new_run_dir(folder / "runs", plan.generate_name), env=env, cwd=REPO,
               lock_dir=folder / "locks", kill_grace=0.5)


def test_a_warm_task_sees_what_a_new_process_sees(tmp_path):
    results = {warm: run_describe(tmp_path, warm) for warm in (False, True)}
    seen = {warm: json.loads(r.task("describe").outputs["seen"]) for warm, r in results.items()}
    cold, warm = seen[False], seen[True]

    assert warm["ppid"] != os.getpid() == cold["ppid"], "the warm task was not forked from the server"
    for key in ("cwd", "path0", "argv0", "env", "main", "modules"):
        assert warm[key] == cold[key], key
    assert warm["argv"][0] == cold["argv"][0] == "-e" and Path(warm["argv"][2]).name == Path(cold["argv"][2]).name
    assert warm["env"] == {"PROBE_BASE": "base", "PROBE_FROM_TEMPLATE": "yes"}
    assert warm["pgid"] == warm["pid"] and cold["pgid"] == cold["pid"], "each task leads its own process group"
    logs = {warm: Path(r.task("describe").log).read_text() for warm, r in results.items()}
    assert "to stdout" in logs[True] and "to stderr" in logs[True]
    # The same lines; their order is the two pipes' race (stdout and stderr are read apart).
    assert sorted(logs[True].splitlines()) == sorted(logs[False].splitlines()), "a warm task's log says more"


@pytest.mark.parametrize("mode, phase, exit_code, words", [
    ("exit-3", "Failed", "3", "Error (exit code 3)"),
    ("exit-text", "Failed", "1", "the step said why"),
    ("raise", "Failed", "1", "ValueError: the step broke"),
])
def test_a_warm_task_fails_as_a_new_process_fails(tmp_path, mode, phase, exit_code, words):
    for warm in (False, True):
        result = run_describe(tmp_path / str(warm), warm, mode)
        task = result.task("describe")
        assert (task.phase, task.outputs.get("exitCode")) == (phase, exit_code), (warm, task)
        assert words in task.message, (warm, task.message)


def test_a_warm_task_is_killed_at_its_deadline(tmp_path):
    for warm in (False, True):
        started = time.monotonic()
        result = run_describe(tmp_path / str(warm), warm, "ok", seconds=30, deadline=2)
        task = result.task("describe")
        assert task.phase == "Failed" and "deadline exceeded (activeDeadlineSeconds 2)" in task.message, (warm, task)
        assert time.monotonic() - started < 15, warm


def test_the_step_modules_read_no_environment_at_import():
    """The warm server imports mlferry's step modules before forking; a module that read a variable
    at import (at module level or in a class body) would keep the server's value in every task."""
    def import_time(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue  # runs when called, in the task
            if isinstance(node, ast.ClassDef):
                yield from import_time(node.body)
                continue
            yield node

    offenders = []
    for path in preloaded_files():
        for node in import_time(ast.parse(path.read_text()).body):
            for inner in ast.walk(node):
                name = getattr(inner, "attr", None) or getattr(inner, "id", None)
                if name in ("environ", "getenv", "environb"):
                    offenders.append(f"{path.relative_to(REPO)}:{inner.lineno}: {ast.unparse(node)[:80]}")
    assert not offenders, offenders


def preloaded_files() -> list[Path]:
    """Every mlferry file the server imports when it preloads the promotion's step modules."""
    import subprocess
    import sys

    from mlferry.engine.warm import entry_modules
    from mlferry.workflows.bundle import Bundle
    from mlferry.generate import workflow_templates

    modules = entry_modules(t for d in workflow_templates(Bundle()) for t in d["spec"]["templates"])
    assert "mlferry.steps.commit" in modules
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) +
            "print('\\n'.join(sorted(getattr(m, '__file__', '') or '' for n, m in sys.modules.items() if n.startswith('mlferry'))))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return [Path(f) for f in found if f]


def test_a_warm_server_that_died_sends_tasks_back_to_a_cold_start():
    import sys

    from mlferry.engine.warm import WarmServer

    argv = [sys.executable, "-m", "hera.workflows.runner", "-e", "tests.executor_steps:describe", "/dev/null"]
    server = WarmServer(sys.executable, str(REPO), dict(os.environ))
    try:
        assert server.serves(argv, os.environ, str(REPO))
        assert not server.serves(argv, {**os.environ, "PYTHONPATH": "/elsewhere"}, str(REPO))  # differs: cold
        server.proc.kill()
        server.proc.wait()
        assert not server.serves(argv, os.environ, str(REPO))
        started = time.monotonic()
        with pytest.raises(OSError):  # what run_pod catches to start the task cold
            server.start(argv, dict(os.environ), str(REPO))
        assert time.monotonic() - started < 5
    finally:
        server.close()


def test_a_local_argos_runs_share_one_warm_server_that_holds_no_secret(tmp_path):
    """Every run of a LocalArgo (a command's, or all of `events serve`'s) forks from one warm server,
    started before the templates are built. It starts with what Python needs and nothing else: what
    it starts with stays readable in /proc/PID/environ of it and of every step forked from it."""
    from mlferry.local import LocalArgo

    env = {**os.environ, "MLFERRY_GIT_TOKEN": "hunter2", "AWS_SECRET_ACCESS_KEY": "s3cr3t-key",
           "MLFERRY_WARM_STEPS": "1"}
    local = LocalArgo.from_environment(None, tmp_path / "runs", env)
    try:
        first = local.warm_server(env)
        assert first is not None and local.warm_server(env) is first
        assert first.any_cwd and first.proc.poll() is None
        held = Path(f"/proc/{first.proc.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in held if b"hunter2" in v or b"s3cr3t-key" in v]
        assert [v for v in held if v.startswith(b"PATH=")], "what starting Python needs is there"
    finally:
        local.close()
    assert first.proc.poll() is not None, "close() ends the shared server"
    assert local.warm_server({**env, "MLFERRY_WARM_STEPS": "0"}) is None


def test_the_first_task_does_not_wait_for_the_modules_imported_ahead():
    """The server imports step modules between requests, never ahead of one: a run's first task
    (reconcile's plan) is forked as soon as Hera is imported, not after every other step's module."""
    import sys

    from mlferry.engine.warm import WarmServer

    env = dict(os.environ)
    server = WarmServer(sys.executable, str(REPO), env, preload=["tests.slow_import"])  # 10 s to import
    try:
        started = time.monotonic()
        proc = server.start([sys.executable, "-m", "hera.workflows.runner", "--help"], env, str(REPO))
        forked = time.monotonic() - started
        assert proc.pid > 0
    finally:
        server.close()  # the server is still importing: it is stopped
    assert forked < 8, f"the task was forked after {forked:.1f} s: it waited for the modules imported ahead"


def test_a_warm_task_ends_as_a_new_process_ends():
    """The warm child leaves with os._exit, past the interpreter's teardown: what an exit does for the
    step must still happen, as in a new process (atexit handlers, non-daemon threads, buffered output)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for warm in (False, True):
            result = run_describe(Path(folder) / str(warm), warm, "at-exit")
            task = result.task("describe")
            assert task.phase == "Succeeded", (warm, task)
            log = Path(task.log).read_text()
            for words in ("atexit handler ran", "thread finished", "written, not flushed"):
                assert words in log, (warm, words, log)


def test_step_modules_named_after_the_server_started_are_imported_ahead(tmp_path):
    """A command starts its server before its templates are built, then names the step modules
    to import ahead (WarmServer.preload); a task forked after that finds them imported, where a
    new process would not have them."""
    import subprocess
    import sys

    from mlferry.engine.warm import WarmServer

    env = dict(os.environ)
    args = tmp_path / "args.json"
    args.write_text(json.dumps([{"name": "module", "value": "mlferry.steps.render"}]))
    argv = [sys.executable, "-m", "hera.workflows.runner", "-e", "tests.executor_steps:imported", str(args)]
    cold = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert cold.strip() == "no"
    server = WarmServer(sys.executable, str(REPO), env)
    try:
        server.preload(["mlferry.steps.render"])
        deadline = time.monotonic() + 60
        while True:
            proc = server.start(argv, env, str(REPO))
            seen = proc.stdout.read().decode().strip()
            assert proc.wait() == 0
            if seen == "yes":
                break
            assert seen == "no" and time.monotonic() < deadline, "the module was never imported ahead"
            time.sleep(0.2)
    finally:
        server.close()

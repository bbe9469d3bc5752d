"""`mlferry stack …` as a user runs it: a separate stack folder, real processes."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MLFERRY = [sys.executable, "-m", "mlferry.cli"]


def mlferry(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*MLFERRY, *args], capture_output=True, text=True, timeout=180, check=check,
                          cwd=Path(__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of(directory: Path) -> set[int]:
    import json

    state = json.loads((directory / "stack.json").read_text())
    return {part["pid"] for part in state.values()}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_is_idempotent_and_down_stops_exactly_what_up_started(tmp_path):
    d = tmp_path / "stack"
    ports = ["--mlflow-port", str(free_port()), "--s3-port", str(free_port())]
    first = mlferry("stack", "up", "--dir", str(d), *ports)
    assert "started" in first.stdout
    pids = pids_of(d)
    try:
        again = mlferry("stack", "up", "--dir", str(d), *ports)
        assert again.stdout.count("already running") == 2 and pids_of(d) == pids
        status = mlferry("stack", "status", "--dir", str(d))
        assert "mlflow   running   http://127.0.0.1:" in status.stdout
        assert "gitops   ready" in status.stdout

        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in mlferry("stack", "env", "--dir", str(d)).stdout.splitlines())
        assert set(env) >= {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                            "AWS_SECRET_ACCESS_KEY", "MLFERRY_GITOPS_REPO", "MLFERRY_GITOPS_BRANCH",
                            "MLFERRY_BUCKET", "MLFERRY_TEAM", "MLFERRY_WEBHOOK_SECRET"}
        assert stat.S_IMODE(os.stat(d / "secrets.env").st_mode) == 0o600
        head = subprocess.run(["git", "--git-dir", str(d / "gitops.git"), "log", "--oneline"],
                              capture_output=True, text=True, check=True).stdout
        assert "Initial commit" in head
    finally:
        mlferry("stack", "down", "--dir", str(d))
    assert not any(alive(pid) for pid in pids)
    assert "stopped" in mlferry("stack", "status", "--dir", str(d), check=False).stdout


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mlferry("stack", "up", "--dir", str(tmp_path / "s"), "--s3-port", str(port),
                         "--mlflow-port", str(free_port()), check=False)
    assert result.returncode == 1
    assert f"mlferry: error: cannot start s3: port {port} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_that_dies_while_starting_shows_its_log(tmp_path, monkeypatch):
    from mlferry.stack import Stack, StackError

    d = tmp_path / "s"
    d.mkdir()
    (d / "mlflow.db").write_text("this is not a sqlite database")
    stack = Stack(d, ports={"s3": 0, "mlflow": 0})
    monkeypatch.setattr(Stack, "_forget_lost_artifacts", lambda *a: None)
    try:
        with pytest.raises(StackError, match=r"mlflow exited with code \d+ while starting; last lines of"):
            stack.up(log=lambda _m: None)
    finally:
        stack.down(log=lambda _m: None)


def test_env_before_up_says_what_to_do(tmp_path):
    result = mlferry("stack", "env", "--dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and "run `mlferry stack up`" in result.stderr

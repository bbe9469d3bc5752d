"""Real servers for the tests: one MLflow server and one S3 server per session (the local stack
itself, so the stack is exercised too), a fresh bare GitOps remote per test, and per-test model
names so tests never see each other's registry entries."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from mlferry.stack import Stack, init_bare_repo

# CI sets this so that a test whose system binary is missing fails instead of skipping: a laptop
# may lack openssh-server, CI must never silently stop running those tests.
REQUIRE_SYSTEM_TESTS = "MLFERRY_REQUIRE_SYSTEM_TESTS"


def require_binary(path: str, install: str) -> None:
    """Skip (or, under MLFERRY_REQUIRE_SYSTEM_TESTS=1, fail) when a system binary is absent."""
    if os.path.exists(path):
        return
    message = f"{path} is missing: {install}"
    if os.environ.get(REQUIRE_SYSTEM_TESTS) == "1":
        pytest.fail(f"{message} ({REQUIRE_SYSTEM_TESTS}=1: CI must run this test)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The local stack on free loopback ports; its environment is exported for the session."""
    stack = Stack(tmp_path_factory.mktemp("stack"), ports={"s3": 0, "mlflow": 0})
    env = stack.up(log=lambda _msg: None)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield stack
    stack.down(log=lambda _msg: None, purge=True)  # a session's objects need no saving
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")


@pytest.fixture
def gitops_remote(tmp_path, monkeypatch) -> Path:
    """A fresh bare GitOps remote with one commit, set as this test's MLFERRY_GITOPS_REPO."""
    remote = tmp_path / "gitops.git"
    init_bare_repo(remote, "main")
    monkeypatch.setenv("MLFERRY_GITOPS_REPO", str(remote))
    monkeypatch.setenv("MLFERRY_GITOPS_BRANCH", "main")
    return remote


def git_log(remote: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), "log", *args], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def unique_name(request) -> str:
    """A registry name no other test uses."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def registered_model(stack, unique_name):
    """Factory: log a small scikit-learn model and register it; returns (name, version)."""
    from tests.models import register_model

    def make(name: str | None = None, **kwargs):
        return register_model(name or unique_name, **kwargs)

    return make

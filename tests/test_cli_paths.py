"""The CLI as a user types it: from another folder, with the default and relative stack folders.

Each step process works in its own folder, so every path a command is given must be made
absolute at the edge; a suite that passed only absolute temporary paths missed that the
README's by-hand block failed with `FileNotFoundError: '.mlferry/runs/…/script'`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlferry.steps.naming import slugify
from tests.conftest import git_log
from tests.test_receiver import free_port, post, signed_request, alias_event

MLFERRY = [sys.executable, "-m", "mlferry.cli"]


def mlferry(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "MLFERRY_STACK_DIR"}
    environ.update(env or {})
    return subprocess.run([*MLFERRY, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=environ)


@pytest.fixture
def work(tmp_path) -> Path:
    """A user's folder that is neither the repo nor the stack's."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def runs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "runs").iterdir()) if (folder / "runs").exists() else []


@pytest.mark.parametrize("how", ["default", "relative flag", "relative variable"])
def test_promote_from_another_folder(how, registered_model, gitops_remote, work):
    name, version = registered_model(alias="staging")
    flags, env, stack_dir = {
        "default": ([], None, work / ".mlferry"),
        "relative flag": (["--stack-dir", "here/stack"], None, work / "here" / "stack"),
        "relative variable": ([], {"MLFERRY_STACK_DIR": "var-stack"}, work / "var-stack"),
    }[how]
    done = mlferry("promote", name, "--alias", "staging", "--env", "staging", *flags, cwd=work, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"promoted {name} v{version} to staging" in done.stdout
    assert "Traceback" not in done.stderr
    assert len(runs_in(stack_dir)) == 1  # the run is recorded where the user said, relative to their folder
    assert f"Model: {name}" in git_log(gitops_remote, "-1", "--format=%B")

    shown = mlferry("runs", "list", *flags, cwd=work, env=env)
    assert runs_in(stack_dir)[0] in shown.stdout


def test_submit_and_reconcile_from_another_folder_with_a_relative_gitops_remote(
        registered_model, gitops_remote, work, unique_name):
    # Reconcile reads the whole registry: the folder's own ./mlferry.yaml (found by default, as a
    # user's would be) maps staging to an alias only this test sets, so other tests' models stay out.
    alias = f"stage-{unique_name[-8:]}"
    (work / "mlferry.yaml").write_text(f"environments:\n  staging: {{aliases: [{alias}]}}\n")
    name, version = registered_model(alias=alias)
    # The remote named relative to the user's folder, as someone would type it.
    relative_remote = os.path.relpath(gitops_remote, work)
    env = {"MLFERRY_GITOPS_REPO": relative_remote}
    done = mlferry("submit", "--from", "workflowtemplate/mlferry-promote", "-p", f"model={name}",
                   "-p", f"version={version}", "-p", "env=staging", cwd=work, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Succeeded" in done.stdout
    folder = f"teams/ml/{slugify(name)}/staging"
    assert git_log(gitops_remote, "--format=%H", "main", "--", folder).split()

    again = mlferry("reconcile", "--stack-dir", "rel", cwd=work, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    assert runs_in(work / "rel")


def test_events_serve_from_another_folder_with_a_relative_stack_dir(registered_model, gitops_remote, work):
    name, version = registered_model(alias="staging")
    port = free_port()
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*MLFERRY, "events", "serve", "--port", str(port), "--stack-dir", "local"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=work,
                                env={k: v for k, v in os.environ.items() if k != "MLFERRY_STACK_DIR"})
    try:
        url = f"http://127.0.0.1:{port}/mlflow"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = post(url, *signed_request(alias_event(name, "staging", version)))
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert status == 202
        folder = f"teams/ml/{slugify(name)}/staging"
        deadline = time.monotonic() + 90
        while not git_log(gitops_remote, "--format=%H", "main", "--", folder).split():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert "FileNotFoundError" not in log.read_text()
        assert runs_in(work / "local")
    finally:
        proc.terminate()
        proc.wait(30)


def test_promote_json_without_env_then_the_run_by_json_and_logs(registered_model, gitops_remote, work):
    import json

    name, version = registered_model(alias="champion")  # an alias of production in the default settings
    done = mlferry("promote", name, "--alias", "champion", "--json", cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)  # nothing but the JSON document on stdout
    assert (result["model"], result["version"], result["env"]) == (name, version, "production")
    assert result["changed"] is True and result["commit"] in git_log(gitops_remote, "-1", "--format=%H")
    steps = {s["name"]: s for s in result["steps"]}
    assert {"verify-event", "resolve", "publish", "render", "commit", "report"} <= set(steps)
    assert all(s["duration"] > 0 for s in steps.values() if s["phase"] == "Succeeded")

    listed = json.loads(mlferry("runs", "list", "--json", cwd=work).stdout)
    assert [r["name"] for r in listed] == [result["run"]] and listed[0]["phase"] == "Succeeded"
    shown = json.loads(mlferry("runs", "show", result["run"], "--json", cwd=work).stdout)
    assert {s["name"] for s in shown["steps"]} >= set(steps)

    logs = mlferry("runs", "logs", result["run"], "commit", cwd=work)
    assert logs.returncode == 0 and logs.stdout.strip()
    missing = mlferry("runs", "logs", result["run"], "no-such-step", cwd=work)
    assert missing.returncode == 1 and "no step 'no-such-step'" in missing.stderr

    unknown = mlferry("promote", name, "--alias", "nobody-uses-this", cwd=work)
    assert unknown.returncode == 1 and "belongs to no configured environment: give --env" in unknown.stderr

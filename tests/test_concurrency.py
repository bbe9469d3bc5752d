"""Promotions started together: none lost, none duplicated, commits serialized by the mutex.

Many different models promoted at once (ten, or MLFERRY_CONCURRENCY_MODELS: thirty is the
release check, and takes four times as long), through `mlferry promote` (the local executor) and through
`mlferry events serve` (real MLflow webhooks), plus the same model and environment asked for twice at
the same time, which lands once. What is checked is what a user sees: commits on the GitOps remote,
the folders and the versions they deploy, and the tags written back on each model version.

Both paths bound the work: at most the bundle's `parallelism` (4) runs go on at once on the machine
(executor.run's `max_runs`, from mlferry.local), and the receiver runs as many promotions at once.
Timings on the two-core CI machine are printed (`-s`); the deadline is generous for a loaded machine.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlferry.steps.naming import slugify
from tests.conftest import git_log
from tests.model_copies import add_version, register_copies
from tests.test_receiver import mlferry, receiver, webhook_name  # noqa: F401 (fixtures)
from mlferry.workflows.bundle import Bundle
from mlferry.engine import list_runs

ROOT = Path(__file__).resolve().parent.parent
# Ten is two and a half times the runs the bundle lets go on at once (parallelism 4): every run
# waits for a slot and every commit for the GitOps mutex, as with thirty, in a third of the time.
MODELS = int(os.environ.get("MLFERRY_CONCURRENCY_MODELS", "10"))
ENV = "production"
DEADLINE = 420.0  # seconds for all of them to land: generous, for a loaded two-core CI machine
pytestmark = pytest.mark.timeout(DEADLINE + 120)  # past the suite's 300 s, so DEADLINE's own message is seen


def promote(stack_dir: Path, name: str, version: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", name, "--version", version,
                           "--env", ENV, "--stack-dir", str(stack_dir)],
                          capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT, env=dict(os.environ))


def commits(remote: Path) -> list[str]:
    return git_log(remote, "--format=%H", "main").split()


def committed_models(remote: Path) -> list[str]:
    """The Model trailer of every commit on main, newest first."""
    return git_log(remote, "--format=%(trailers:key=Model,valueonly)", "main").split()


def folder(name: str) -> str:
    return f"teams/ml/{slugify(name)}/{ENV}"


def deployment(remote: Path, name: str) -> str:
    shown = subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{folder(name)}/deployment.yaml"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, f"{folder(name)}/deployment.yaml is not on main: {shown.stderr}"
    return shown.stdout


def assert_deployed(remote: Path, name: str, version: str) -> None:
    assert f"s3://mlferry/models/{slugify(name)}/{version}/" in deployment(remote, name), (name, version)


def status_tags(name: str, version: str) -> dict[str, str]:
    tags = MlflowClient().get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(f"mlferry.{ENV}.")}


def commit_spans(runs: Path) -> list[tuple[datetime, datetime]]:
    """When each run's commit step ran, from the run records, in start order."""
    return sorted((datetime.fromisoformat(t.started), datetime.fromisoformat(t.finished))
                  for run in list_runs(runs) for t in run.tasks if t.name == "commit" and t.started)


def overlapping(spans: list[tuple[datetime, datetime]]) -> list[tuple]:
    return [(a, b) for a, b in zip(spans, spans[1:]) if a[1] > b[0]]


def most_runs_at_once(runs: Path) -> int:
    """The most runs whose steps were under way at the same moment (from first step start to last step end)."""
    spans = []
    for run in list_runs(runs):
        pods = [t for t in run.tasks if t.type == "Pod" and t.started and t.finished]
        if pods:
            spans.append((min(t.started for t in pods), max(t.finished for t in pods)))
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


def eventually(check, what: str, timeout: float, detail=lambda: ""):
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s\n{detail()}")
        time.sleep(0.5)


# --- through the executor: `mlferry promote` started 31 times at once ---------------------------------

def test_thirty_promotions_started_together_all_land_once(stack, gitops_remote, tmp_path, unique_name):
    started = time.monotonic()
    models = register_copies([f"{unique_name}-{i}" for i in range(MODELS)])
    registered = time.monotonic() - started
    jobs = models + [models[0]]  # the same model and environment twice at once
    before = len(commits(gitops_remote))

    started = time.monotonic()
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: promote(tmp_path, *job), jobs))
    took = time.monotonic() - started
    print(f"\n{MODELS} models registered in {registered:.1f}s; {len(jobs)} promotions at once took {took:.1f}s")

    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
    runs = list_runs(tmp_path / "runs")
    assert len(runs) == len(jobs) and {run.phase for run in runs} == {"Succeeded"}

    assert len(commits(gitops_remote)) - before == MODELS  # none lost, none doubled
    landed = committed_models(gitops_remote)
    assert sorted(landed) == sorted(name for name, _ in models)
    for name, version in models:
        assert_deployed(gitops_remote, name, version)
        # No alias selects these versions: a deliberate `--version` deploy is a hold (README: the rule).
        assert status_tags(name, version)[f"mlferry.{ENV}.status"] == "held"
    assert sum("nothing to change" in r.stdout for r in results) == 1

    # The commit steps held the GitOps mutex one at a time, and the machine ran a bounded number of runs.
    spans = commit_spans(tmp_path / "runs")
    assert len(spans) == len(jobs)
    assert not overlapping(spans)
    assert most_runs_at_once(tmp_path / "runs") <= Bundle().parallelism


# --- through `mlferry events serve`: thirty aliases set at once, real MLflow webhooks -------------------

def test_thirty_aliases_set_together_through_the_receiver_all_land_once(stack, gitops_remote, receiver,
                                                                        webhook_name, unique_name):
    registered = mlferry("webhook", "register", "--url", receiver.url, "--name", webhook_name)
    assert registered.returncode == 0, registered.stderr
    started = time.monotonic()
    models = register_copies([f"{unique_name}-{i}" for i in range(MODELS)])
    again, moved = models[0], models[1]  # alias set twice on the same version; alias moved to a newer version
    newer = add_version(moved[0], like=models[0][0])
    print(f"\n{MODELS} models registered in {time.monotonic() - started:.1f}s")
    client = MlflowClient()
    before = len(commits(gitops_remote))

    def set_alias(job: tuple[str, str]) -> None:
        client.set_registered_model_alias(job[0], ENV, job[1])

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # as thirty data scientists would, give or take
        list(pool.map(set_alias, models))
    set_alias(again)  # a second event for the same model, version and environment
    set_alias((moved[0], newer))  # the alias moves on before its first promotion has run

    def all_tagged() -> bool:
        expected = [*[m for m in models if m != moved], (moved[0], newer)]
        return all(status_tags(*m).get(f"mlferry.{ENV}.status") == "deployed" for m in expected)

    eventually(lambda: len(set(committed_models(gitops_remote))) >= MODELS and all_tagged(),
               f"not every one of the {MODELS} models was committed and tagged", DEADLINE,
               lambda: f"health: {receiver.health()}\n{receiver.text()[-20000:]}")
    state = receiver.wait_idle(finished=1, timeout=DEADLINE)
    took = time.monotonic() - started
    print(f"{MODELS} aliases set at once: all committed and tagged after {took:.1f}s; receiver {state}")

    landed = committed_models(gitops_remote)
    assert sorted(set(landed)) == sorted(name for name, _ in models)  # none lost
    for name, version in models:
        if name == moved[0]:
            continue
        assert landed.count(name) == 1, f"{name} was committed {landed.count(name)} times"  # none doubled
        assert_deployed(gitops_remote, name, version)
    # The moved alias: the latest move wins, and no version is committed twice.
    assert_deployed(gitops_remote, moved[0], newer)
    versions = git_log(gitops_remote, "--format=%(trailers:key=Version,valueonly)", "main", "--",
                       folder(moved[0])).split()
    assert versions[0] == newer and len(versions) == len(set(versions)) <= 2, versions
    assert len(commits(gitops_remote)) - before == MODELS + len(versions) - 1

    log = receiver.text()
    assert log.count(" 401 ") == 0 and "skipped " not in log and "could not start" not in log
    assert " Failed in " not in log and " Error in " not in log

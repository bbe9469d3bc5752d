"""Promotions started together: none lost, none duplicated, commits serialized by the mutex."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from steps.naming import slugify
from tests.conftest import git_log
from workflows.runs import list_runs

ROOT = Path(__file__).resolve().parent.parent


def promote(stack_dir: Path, name: str, version: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", name, "--version", version,
                           "--env", "production", "--stack-dir", str(stack_dir)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ))


def test_promotions_started_together_all_land_once(registered_model, gitops_remote, tmp_path, unique_name):
    models = [registered_model(f"{unique_name}-{i}") for i in range(4)]
    jobs = models + [models[0]]  # the same model and environment twice at once
    before = len(git_log(gitops_remote, "--format=%H").split())
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: promote(tmp_path, *job), jobs))
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr

    models_committed = git_log(gitops_remote, "--format=%(trailers:key=Model,valueonly)").split()
    assert len(git_log(gitops_remote, "--format=%H").split()) - before == len(models)  # none lost or doubled
    for name, _ in models:
        assert models_committed.count(name) == 1
        tree = subprocess.run(["git", "--git-dir", str(gitops_remote), "ls-tree", "--name-only", "main",
                               f"teams/ml/{slugify(name)}/production/"], capture_output=True, text=True).stdout
        assert "kustomization.yaml" in tree
    assert sum("nothing to change" in r.stdout for r in results) == 1

    # The commit steps held the GitOps mutex one at a time.
    spans = sorted((datetime.fromisoformat(t.started), datetime.fromisoformat(t.finished))
                   for run in list_runs(tmp_path / "runs") for t in run.tasks if t.name == "commit")
    assert len(spans) == len(jobs)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))

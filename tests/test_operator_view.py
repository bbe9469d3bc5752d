"""`mlferry status` and `mlferry history` against the real registry, object store and GitOps remote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlferry.cli import main
from mlferry.steps import gitops
from mlferry.steps.naming import slugify
from mlferry.steps.plan import Deployed
from mlferry.steps.retire import retirement
from tests.conftest import git_log

ROOT = Path(__file__).resolve().parent.parent


def mlferry(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """`mlferry …` in this process (saves the interpreter start-up): (exit code, stdout, stderr)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # what `status` would set for itself
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.chdir(tmp_path)  # no stray ./mlferry.yaml

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_status_and_history_follow_promotions_alias_moves_and_removals(
        cli, registered_model, gitops_remote, s3, unique_name, tmp_path):
    def promote(model: str, env: str, trigger: str) -> None:
        code, _, err = cli("promote", model, "--alias", env, "--env", env, "--trigger", trigger,
                           "--stack-dir", str(tmp_path / "stack"))
        assert code == 0, err

    fraud, v1 = registered_model(f"{unique_name}-fraud", alias="production")
    churn, c1 = registered_model(f"Churn {unique_name}", alias="staging")  # a name that needs a slug
    promote(fraud, "production", "manual")
    promote(churn, "staging", "schedule")

    def status() -> dict[tuple[str, str], dict]:
        code, out, err = cli("status", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["repo"] == str(gitops_remote)
        assert report["head"] == git_log(gitops_remote, "-1", "--format=%H").strip()
        return {(r["model"], r["env"]): r for r in report["rows"] if r["model"] in (fraud, churn)}

    rows = status()
    assert set(rows) == {(fraud, "production"), (churn, "staging")}
    row = rows[(fraud, "production")]
    assert row["in_sync"] and row["drift"] == [] and row["published"] is True
    assert row["registry"] == {"version": v1, "selected_by": [{"kind": "alias", "name": "production"}]}
    assert row["git"] == {"version": v1} and row["folder"] == f"teams/ml/{slugify(fraud)}/production"
    assert row["last_commit"]["kind"] == "deploy" and row["last_commit"]["trigger"] == "manual"
    assert row["last_commit"]["age_seconds"] < 600
    assert rows[(churn, "staging")]["last_commit"]["trigger"] == "schedule"

    # A data scientist moves the alias: the registry and git disagree until the promotion runs.
    _, v2 = registered_model(fraud)
    MlflowClient().set_registered_model_alias(fraud, "production", v2)
    row = status()[(fraud, "production")]
    assert [d["code"] for d in row["drift"]] == ["version-differs"]
    assert row["registry"]["version"] == v2 and row["git"]["version"] == v1
    assert f"mlferry promote {fraud} --version {v2} --env production" in row["drift"][0]["message"]
    code, table, _ = cli("status", "--env", "production", "--check")
    assert code == 3
    line = next(ln for ln in table.splitlines() if ln.startswith(fraud))
    assert line.split()[:6] == [fraud, "production", f"v{v2}", "@production", f"v{v1}", "yes"]
    assert line.endswith("version-differs") and churn not in table  # --env filters
    promote(fraud, "production", "webhook")
    assert status()[(fraud, "production")]["in_sync"]

    # History: both versions, newest first, with their triggers; --json says the same.
    code, out, err = cli("history", fraud, "--env", "production", "--json")
    assert code == 0, err
    events = json.loads(out)["events"]
    assert [(e["kind"], e["version"], e["trigger"]) for e in events] == [("deploy", v2, "webhook"),
                                                                       ("deploy", v1, "manual")]
    assert events[0]["commit"] == git_log(gitops_remote, "-1", "--format=%H").strip()
    assert events[0]["author"].startswith("mlferry <") and events[0]["training_run"]
    assert events[0]["alias"] == "production" and events[0]["workflow"].startswith("mlferry-promote-")
    code, table, _ = cli("history", fraud, "--env", "production")
    lines = table.splitlines()
    assert lines[0].startswith(f"history of {fraud} in production in {gitops_remote} main@")
    assert [ln.split()[3:7] for ln in lines[2:]] == [
        ["deploy", f"v{e['version']}", e["trigger"], e["workflow"]] for e in events]
    assert [ln.split()[7] for ln in lines[2:]] == [e["commit"][:12] for e in events]

    # The alias is deleted: the folder stays in git, flagged, until something removes it.
    MlflowClient().delete_registered_model_alias(churn, "staging")
    # And a published copy disappears from the object store: the pods could not load it.
    s3.delete_object(Bucket="mlferry", Key=f"models/{slugify(fraud)}/{v2}/mlferry-manifest.json")
    rows = status()
    assert [d["code"] for d in rows[(churn, "staging")]["drift"]] == ["no-alias"]
    assert rows[(churn, "staging")]["registry"] is None and rows[(churn, "staging")]["git"] == {"version": c1}
    assert rows[(fraud, "production")]["published"] is False
    assert [d["code"] for d in rows[(fraud, "production")]["drift"]] == ["not-published"]
    code, table, _ = cli("status")
    line = next(ln for ln in table.splitlines() if ln.startswith(f"Churn {unique_name}"))
    assert line.split()[2:6] == ["staging", "-", f"v{c1}", "yes"] and line.endswith("no-alias")
    assert f"Churn {unique_name} in staging: no alias or stage selects a version for staging any more" in table

    # Removing the folder (what the webhook does for a deleted alias) ends its row, and is history.
    change = retirement([("staging", Deployed(churn, c1, f"teams/ml/{slugify(churn)}/staging"))], "ml", "webhook")
    gitops.publish_folder(str(gitops_remote), "main", change)
    assert (churn, "staging") not in status()
    code, out, _ = cli("history", churn, "--json")
    events = json.loads(out)["events"]
    assert [(e["kind"], e["env"], e["version"], e["trigger"]) for e in events] == [
        ("remove", "staging", "", "webhook"), ("deploy", "staging", c1, "schedule")]
    assert events[0]["folder"] == f"teams/ml/{slugify(churn)}/staging"


@pytest.fixture
def empty_registry(tmp_path_factory, monkeypatch):
    """A second real MLflow server (and S3) with nothing registered, for this test alone."""
    from mlferry.stack import Stack

    other = Stack(tmp_path_factory.mktemp("empty-stack"), ports={"s3": 0, "mlflow": 0})
    env = other.up(log=lambda _msg: None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    yield env["MLFLOW_TRACKING_URI"]
    other.down(log=lambda _msg: None)


def test_an_empty_repo_and_registry_is_a_clear_empty_table(cli, gitops_remote, stack, empty_registry):
    done = mlferry("status")  # once through the real entry point
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"registry {empty_registry} · gitops {gitops_remote} main@")
    assert lines[1].split() == ["MODEL", "ENV", "REGISTRY", "GIT", "PUBLISHED", "LAST", "CHANGE", "AGE", "DRIFT"]
    assert lines[2] == ("(nothing to show: no alias or stage selects a model version, "
                        "and teams/ml/ holds no model folder)")
    code, out, _ = cli("status", "--json", "--check")
    assert code == 0 and json.loads(out)["rows"] == [] and json.loads(out)["drifting"] == 0
    code, out, _ = cli("history", "never-promoted", "--env", "production")
    assert code == 0 and out.startswith(f"no deployments of never-promoted in production in {gitops_remote} main@")


def test_errors_are_one_line_saying_what_to_do(cli, gitops_remote, tmp_path, stack, monkeypatch):
    code, _, err = cli("status", "--env", "nowhere")
    assert code == 1 and err.strip() == ("mlferry: error: unknown environment 'nowhere'; "
                                         "configured environments: production, staging")
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        code, _, err = cli("status")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "MLFLOW_TRACKING_URI must be the http(s) address of the MLflow server" in err
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", "http://user:hunter2@127.0.0.1:9")  # nothing listens on port 9
        code, _, err = cli("status")
    assert code == 1 and "MLflow at http://127.0.0.1:9 refused the connection" in err and "hunter2" not in err
    monkeypatch.setenv("MLFERRY_GITOPS_REPO", str(tmp_path / "missing.git"))
    code, _, err = cli("history", "fraud")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "missing.git" in err and "check MLFERRY_GITOPS_REPO" in err


def test_history_tells_a_hand_edit_from_a_removal(gitops_remote):
    from mlferry.history import model_history
    from mlferry.steps.commit import CommitInput, commit_message

    folder = "teams/ml/fraud/staging"
    promoted = CommitInput(model="fraud", version="7", env="staging", folder=folder, run_id="promote-x7k2p",
                           trigger="webhook", files={"kustomization.yaml": "a: 1\n", "hpa.yaml": "b: 2\n"})
    for files, message in (
        (promoted.files, commit_message(promoted)),
        ({"kustomization.yaml": "a: 1\n"}, "drop the autoscaler\n"),  # deletes a file, not the folder
        ({}, "remove fraud from staging\n\nTrigger: schedule\n"),
    ):
        gitops.publish_folder(str(gitops_remote), "main", gitops.FolderChange.single(folder, files, message))
    events = model_history("fraud", "staging", "ml", str(gitops_remote), "main").events
    assert [(e.kind, e.version, e.trigger, e.training_run) for e in events] == [
        ("remove", "", "schedule", ""), ("edit", "", "", ""), ("deploy", "7", "webhook", "promote-x7k2p")]
    assert events[1].subject == "drop the autoscaler" and events[2].model == "fraud"

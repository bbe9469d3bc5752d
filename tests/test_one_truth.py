"""One truth for what runs where: every path applies the one rule (steps/rule.py), deliberate
actions stick as holds, prunes need positive evidence, and the tags say what is true.

Against the real local stack: the session's MLflow server, its S3 server, a bare GitOps remote,
the CLI run from the test's own folder as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mlferry.stack.processes import free_port
from mlferry.steps.naming import slugify
from tests.conftest import git_log
from tests.test_receiver import alias_event, signed_request


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, **(env or {})})


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def folder_files(remote: Path, folder: str) -> dict[str, str]:
    names = subprocess.run(["git", "--git-dir", str(remote), "ls-tree", "--name-only", f"main:{folder}"],
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{folder}/{n}"], capture_output=True,
                              text=True, check=True).stdout for n in names}


def annotations(remote: Path, folder: str) -> dict[str, str]:
    deployment = yaml.safe_load(folder_files(remote, folder)["deployment.yaml"])
    return deployment["metadata"]["annotations"]


def tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def head(remote: Path) -> str:
    return git_log(remote, "-1", "--format=%H").strip()


@pytest.fixture
def work(tmp_path: Path, unique_name: str) -> Path:
    """The user's folder, with an mlferry.yaml whose aliases only this test uses."""
    suffix = unique_name[-8:]
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mlferry.yaml").write_text(
        f"environments:\n"
        f"  staging: {{aliases: [stage-{suffix}]}}\n"
        f"  production: {{aliases: [prod-{suffix}, champ-{suffix}]}}\n")
    return tmp_path / "work"


def names(work: Path) -> dict[str, str]:
    config = yaml.safe_load((work / "mlferry.yaml").read_text())["environments"]
    return {"staging": config["staging"]["aliases"][0], "production": config["production"]["aliases"][0],
            "champion": config["production"]["aliases"][1]}


def test_every_path_picks_the_first_configured_alias_and_an_event_is_only_a_hint(registered_model, gitops_remote,
                                                                                 work):
    alias = names(work)
    name, v1 = registered_model(alias=alias["champion"])
    _, v2 = registered_model(name, alias=alias["production"])
    folder = f"teams/ml/{slugify(name)}/production"

    # Asked for @champion (v1), the rule deploys v2: the production alias comes first in the config.
    first = ok(cli(work, "promote", name, "--alias", alias["champion"], "--env", "production"))
    assert f"promoted {name} v{v2} to production" in first and f"@{alias['production']}" in first
    assert annotations(gitops_remote, folder)["mlferry.io/version"] == v2
    # Reconcile agrees: nothing pending, nothing changed.
    assert cli(work, "reconcile", "--dry-run").returncode == 0
    before = head(gitops_remote)
    ok(cli(work, "reconcile"))
    assert head(gitops_remote) == before

    # A signed webhook that says "champion moved to v1" is a hint to look: the rule still says v2.
    body, headers = signed_request(alias_event(name, alias["champion"], v1))
    event = {"body": body.decode(), "delivery_id": headers["X-MLflow-Delivery-Id"],
             "timestamp": headers["X-MLflow-Timestamp"], "signature": headers["X-MLflow-Signature"]}
    params = [f"{k}={v}" for k, v in {"model": name, "alias": alias["champion"], "env": "production",
                                      "trigger": "webhook", **event}.items()]
    ok(cli(work, "submit", "--from", "workflowtemplate/mlferry-promote", *[a for p in params for a in ("-p", p)]))
    assert annotations(gitops_remote, folder)["mlferry.io/version"] == v2 and head(gitops_remote) == before

    # A signed `deleted` event while the production alias still exists removes nothing.
    MlflowClient().delete_registered_model_alias(name, alias["champion"])
    body, headers = signed_request(alias_event(name, alias["champion"], action="deleted"))
    event = {"body": body.decode(), "delivery_id": headers["X-MLflow-Delivery-Id"],
             "timestamp": headers["X-MLflow-Timestamp"], "signature": headers["X-MLflow-Signature"]}
    params = [f"{k}={v}" for k, v in {"model": name, "alias": alias["champion"], "env": "production",
                                      "trigger": "webhook", **event}.items()]
    ok(cli(work, "submit", "--from", "workflowtemplate/mlferry-promote", *[a for p in params for a in ("-p", p)]))
    assert folder_files(gitops_remote, folder) and head(gitops_remote) == before


def test_a_manual_version_is_a_hold_that_webhooks_and_reconcile_respect_until_released(
        registered_model, gitops_remote, work):
    alias = names(work)["staging"]
    name, v1 = registered_model()
    _, v2 = registered_model(name, alias=alias)
    folder = f"teams/ml/{slugify(name)}/staging"
    ok(cli(work, "promote", name, "--alias", alias))
    assert tags(name, v2)["mlferry.staging.status"] == "deployed"

    # The README's manual redeploy of v1 is deliberate: it is held, in git and on the objects.
    held = ok(cli(work, "promote", name, "--version", v1, "--env", "staging", "--reason", "v2 misbehaves"))
    assert "held" in held and "v2 misbehaves" in held
    assert annotations(gitops_remote, folder)["mlferry.io/hold"] == "v2 misbehaves"
    assert tags(name, v1)["mlferry.staging.status"] == "held"
    assert tags(name, v2)["mlferry.staging.status"] == "superseded"

    # Reconcile leaves it, and says so; so does a promotion that follows the alias.
    plan = cli(work, "reconcile", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"held     {name} v{v1} in staging: v2 misbehaves (the rule selects v{v2})" in plan.stdout
    before = head(gitops_remote)
    assert "1 held" in ok(cli(work, "reconcile"))
    blocked = ok(cli(work, "promote", name, "--alias", alias))
    assert f"held: staging stays at v{v1}" in blocked
    assert head(gitops_remote) == before
    assert tags(name, v2)["mlferry.staging.status"] == "blocked"
    status = json.loads(ok(cli(work, "status", "--json")))
    row = next(r for r in status["rows"] if r["model"] == name)
    assert row["git"] == {"version": v1, "hold": "v2 misbehaves"} and row["drift"][0]["code"] == "held"

    # Released: the rule's version again, and the hold is gone from git.
    assert cli(work, "release", name, "--env", "staging", "--dry-run").returncode == 2
    ok(cli(work, "release", name, "--env", "staging"))
    notes = annotations(gitops_remote, folder)
    assert notes["mlferry.io/version"] == v2 and "mlferry.io/hold" not in notes
    assert tags(name, v2)["mlferry.staging.status"] == "deployed"
    assert tags(name, v1)["mlferry.staging.status"] == "superseded"


def test_another_environments_alias_is_refused_unless_forced(registered_model, gitops_remote, work):
    alias = names(work)
    name, version = registered_model(alias=alias["staging"])
    refused = cli(work, "promote", name, "--alias", alias["staging"], "--env", "production")
    assert refused.returncode == 1
    assert f"alias '{alias['staging']}' (v{version}) belongs to environment 'staging', not to 'production'" \
        in refused.stderr and "--force" in refused.stderr
    assert git_log(gitops_remote, "--format=%s").count("\n") == 1  # only the remote's first commit
    forced = ok(cli(work, "promote", name, "--alias", alias["staging"], "--env", "production", "--force"))
    assert "held" in forced
    assert annotations(gitops_remote, f"teams/ml/{slugify(name)}/production")["mlferry.io/hold"].startswith("forced")


def test_dry_runs_change_nothing_and_say_whether_changes_are_pending(registered_model, gitops_remote, work):
    name, version = registered_model(alias=names(work)["staging"])
    before = head(gitops_remote)
    promote = cli(work, "promote", name, "--alias", names(work)["staging"], "--dry-run")
    assert promote.returncode == 2 and f"would promote {name} v{version} to staging" in promote.stdout
    plan = cli(work, "reconcile", "--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert f"promote  {name} v{version} to staging (not deployed yet)" in plan.stdout
    assert head(gitops_remote) == before
    ok(cli(work, "reconcile"))
    assert cli(work, "reconcile", "--dry-run").returncode == 0
    assert cli(work, "promote", name, "--alias", names(work)["staging"], "--dry-run").returncode == 0


def test_a_folder_of_an_environment_the_config_lacks_is_reported_not_removed(registered_model, gitops_remote,
                                                                             work, tmp_path):
    qa = f"qa-{work.parent.name[-6:]}"
    (work / "mlferry.yaml").write_text((work / "mlferry.yaml").read_text() + f"  qa: {{aliases: [{qa}]}}\n")
    name, _ = registered_model(alias=qa)
    ok(cli(work, "promote", name, "--alias", qa))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mlferry.yaml").write_text("environments:\n  staging: {aliases: [nobody-uses-this]}\n")
    before = head(gitops_remote)
    out = ok(cli(elsewhere, "reconcile"))
    assert head(gitops_remote) == before
    assert f"kept     {name} v1 in qa: environment 'qa' is not in this configuration" in out


def test_an_empty_registry_answer_removes_nothing_unless_forced(registered_model, gitops_remote, work, tmp_path):
    alias = names(work)
    a, _ = registered_model(f"{work.parent.name[-12:]}-a", alias=alias["staging"])
    b, _ = registered_model(f"{work.parent.name[-12:]}-b", alias=alias["production"])
    ok(cli(work, "reconcile"))
    before = head(gitops_remote)

    # A failover to an empty database: a real MLflow server that answers 200 with no models.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/empty.db",
                               "--default-artifact-root", str(tmp_path / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health")
        empty = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        refused = cli(work, "reconcile", env=empty)
        assert refused.returncode == 1
        assert "refusing to remove 2 of the 2 model folders in one run (every one" in refused.stdout + refused.stderr
        assert head(gitops_remote) == before
        # Told explicitly, the operator gets what they asked for: both folders go.
        ok(cli(work, "reconcile", "--prune", "force", env=empty))
        left = subprocess.run(["git", "--git-dir", str(gitops_remote), "ls-tree", "-r", "--name-only", "main"],
                              capture_output=True, text=True, check=True).stdout
        assert slugify(a) not in left and slugify(b) not in left
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def wait_healthy(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def test_a_name_that_maps_to_another_models_folder_is_refused_by_name(registered_model, gitops_remote, work,
                                                                      unique_name):
    alias = names(work)["staging"]
    first, _ = registered_model(f"Wine {unique_name}", alias=alias)
    ok(cli(work, "promote", first, "--alias", alias))
    twin, _ = registered_model(slugify(first), alias=alias)  # literally the first one's folder name
    assert slugify(twin) == slugify(first)
    refused = cli(work, "promote", twin, "--alias", alias)
    assert refused.returncode == 1
    assert f"belongs to model {first!r}; model {twin!r} maps to the same folder name" in refused.stderr, refused.stderr
    assert annotations(gitops_remote, f"teams/ml/{slugify(first)}/staging")["mlferry.io/model-name"] == first
    plan = cli(work, "reconcile", "--dry-run")
    assert f"refused  {twin} in staging: its folder teams/ml/{slugify(first)}/staging belongs to model" in plan.stdout


def test_rollback_moves_the_alias_back_and_nothing_redeploys_the_bad_version(registered_model, gitops_remote, work):
    alias = names(work)["production"]
    name, v1 = registered_model(alias=alias)
    ok(cli(work, "promote", name, "--alias", alias))
    _, v2 = registered_model(name, alias=alias)
    ok(cli(work, "promote", name, "--alias", alias))

    out = ok(cli(work, "rollback", name, "--env", "production", "--reason", "latency doubled"))
    assert f"promoted {name} v{v1} to production" in out and f"@{alias} moved back from v{v2} to v{v1}" in out
    assert MlflowClient().get_model_version_by_alias(name, alias).version == v1
    assert annotations(gitops_remote, f"teams/ml/{slugify(name)}/production")["mlferry.io/version"] == v1
    assert "latency doubled" in tags(name, v2)["mlferry.production.rollback"]
    assert tags(name, v2)["mlferry.production.status"] == "superseded"
    assert tags(name, v1)["mlferry.production.status"] == "deployed"
    before = head(gitops_remote)
    ok(cli(work, "reconcile"))
    assert head(gitops_remote) == before


def test_a_failure_leaves_no_earlier_commit_on_the_version(registered_model, gitops_remote, work, monkeypatch):
    alias = names(work)["staging"]
    name, version = registered_model(alias=alias)
    ok(cli(work, "promote", name, "--alias", alias))
    assert tags(name, version)["mlferry.staging.commit"]
    broken = cli(work, "promote", name, "--alias", alias, env={"MLFERRY_GITOPS_REPO": str(work / "no-such.git")})
    assert broken.returncode == 1
    found = tags(name, version)
    assert found["mlferry.staging.status"] == "failed"
    assert "mlferry.staging.commit" not in found and "\n" not in found["mlferry.staging.error"]
    assert not found["mlferry.staging.error"].startswith("{")


def test_an_empty_gitops_repo_gets_its_branch_only_when_asked(registered_model, work, tmp_path):
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(empty)], check=True)
    alias = names(work)["staging"]
    name, version = registered_model(alias=alias)
    refused = cli(work, "promote", name, "--alias", alias, env={"MLFERRY_GITOPS_REPO": str(empty)})
    assert refused.returncode == 1
    assert "is empty: branch 'main' does not exist" in refused.stderr and "MLFERRY_GITOPS_CREATE_BRANCH" in refused.stderr
    assert subprocess.run(["git", "--git-dir", str(empty), "rev-parse", "--verify", "-q", "main"]).returncode != 0
    ok(cli(work, "promote", name, "--alias", alias,
           env={"MLFERRY_GITOPS_REPO": str(empty), "MLFERRY_GITOPS_CREATE_BRANCH": "true"}))
    assert annotations(empty, f"teams/ml/{slugify(name)}/staging")["mlferry.io/version"] == version


def run_step(step: str, inputs: dict, cwd: Path, out: Path) -> dict[str, str]:
    """One step as its pod runs it (Hera's runner, the team's settings from mlferry.yaml in cwd)."""
    args = out / f"{step}-args.json"
    args.parent.mkdir(parents=True, exist_ok=True)
    from mlferry.steps.commit import CommitInput
    from mlferry.steps.report import ReportInput

    # Argo hands a script every input its template declares; Hera's runner expects them all.
    declared = {"commit": CommitInput, "report": ReportInput}[step].model_validate(inputs).model_dump()
    args.write_text(json.dumps([{"name": k, "value": v if isinstance(v, str) else json.dumps(v)}
                                for k, v in declared.items()]))
    done = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", f"mlferry.steps.{step}:{step}",
                           str(args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "hera__outputs_directory": str(out / step)})
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_text() for p in (out / step / "parameters").iterdir()}


def test_an_older_decision_never_lands_after_a_newer_one(registered_model, gitops_remote, work, tmp_path):
    """Runs for one model and environment overlap on a cluster (the mutex orders commits, not
    decisions): a run that chose v1, slow to commit after the alias moved on to v2, commits nothing."""
    alias = names(work)["staging"]
    name, v1 = registered_model(alias=alias)
    _, v2 = registered_model(name)
    folder = f"teams/ml/{slugify(name)}/staging"
    ok(cli(work, "promote", name, "--alias", alias))
    v1_files = folder_files(gitops_remote, folder)  # what run A rendered, deciding v1

    MlflowClient().set_registered_model_alias(name, alias, v2)
    ok(cli(work, "promote", name, "--alias", alias))  # run B, started by the move, deploys v2
    assert annotations(gitops_remote, folder)["mlferry.io/version"] == v2
    landed = head(gitops_remote)

    # Run A's commit comes last, holding the mutex now: the registry is asked once more.
    stale = {"model": name, "version": v1, "env": "staging", "folder": folder, "files": v1_files,
             "trigger": "webhook", "alias": alias, "follow_rule": True}
    outputs = run_step("commit", stale, work, tmp_path / "run-a")
    assert outputs["changed"] == "false" and outputs["overtaken"] == f"v{v2} (@{alias})"
    assert head(gitops_remote) == landed
    assert annotations(gitops_remote, folder)["mlferry.io/version"] == v2

    run_step("report", {"model": name, "version": v1, "env": "staging", "overtaken": outputs["overtaken"],
                        "commit": outputs["sha"]}, work, tmp_path / "run-a")
    assert tags(name, v1)["mlferry.staging.status"] == "superseded"
    assert tags(name, v1)["mlferry.staging.reason"] == f"not deployed: the rule selected v{v2} (@{alias}) before this run could commit"
    assert tags(name, v2)["mlferry.staging.status"] == "deployed"

    # A hold is deliberate: the same late commit, as a hold, is not second-guessed.
    held = run_step("commit", {**stale, "hold": "pinned by hand"}, work, tmp_path / "hold")
    assert held["changed"] == "true" and held["overtaken"] == ""

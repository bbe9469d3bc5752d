"""`mlferry promote` end to end: registry → S3 copy → GitOps commit → registry tags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

from mlferry.steps.naming import slugify
from tests.conftest import git_log

ROOT = Path(__file__).resolve().parent.parent


def promote(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, **(env or {})})


def show(remote: Path, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{path}"], capture_output=True,
                          text=True, check=True).stdout


def test_promote_by_alias_then_again_changes_nothing(registered_model, gitops_remote, s3):
    name, version = registered_model(alias="production")
    first = promote(name, "--alias", "production", "--env", "production")
    assert first.returncode == 0, first.stderr
    slug = slugify(name)
    folder = f"teams/ml/{slug}/production"
    assert f"promoted {name} v{version} to production" in first.stdout
    assert f"main:{folder}/  commit" in first.stdout

    # The GitOps folder: a kustomization and its resources, pointing at the published copy.
    kustomization = yaml.safe_load(show(gitops_remote, f"{folder}/kustomization.yaml"))
    assert sorted(kustomization["resources"]) == ["deployment.yaml", "service.yaml"]
    deployment = yaml.safe_load(show(gitops_remote, f"{folder}/deployment.yaml"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"s3://mlferry/models/{slug}/{version}/" in container.get("args", []) + container["command"]
    message = git_log(gitops_remote, "-1", "--format=%B")
    assert f"Model: {name}" in message and f"Version: {version}" in message and "Trigger: manual" in message

    # The S3 copy is complete.
    manifest = json.loads(s3.get_object(Bucket="mlferry", Key=f"models/{slug}/{version}/mlferry-manifest.json")
                          ["Body"].read())
    assert {f["path"] for f in manifest["files"]} >= {"MLmodel", "model.skops"}

    # The registry knows where it went.
    tags = MlflowClient().get_model_version(name, version).tags
    head = git_log(gitops_remote, "-1", "--format=%H").strip()
    assert tags["mlferry.production.status"] == "deployed"
    assert tags["mlferry.production.commit"] == head
    assert tags["mlferry.production.uri"] == f"s3://mlferry/models/{slug}/{version}/"

    # Twice is the same as once: nothing uploaded, nothing committed.
    commits = git_log(gitops_remote, "--format=%H").split()
    second = promote(name, "--version", version, "--env", "production")
    assert second.returncode == 0, second.stderr
    assert "(0 uploaded," in second.stdout and f"nothing to change (head {head[:12]})" in second.stdout
    assert git_log(gitops_remote, "--format=%H").split() == commits


def test_no_credential_reaches_git(registered_model, gitops_remote):
    name, _ = registered_model(alias="production")
    assert promote(name, "--alias", "production", "--env", "production").returncode == 0
    everything = subprocess.run(["git", "--git-dir", str(gitops_remote), "log", "-p", "--all"],
                                capture_output=True, text=True, check=True).stdout
    for secret in (os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"],
                   os.environ["MLFERRY_WEBHOOK_SECRET"]):
        assert secret not in everything
    assert "secretKeyRef" in everything


def test_a_manifest_that_fails_validation_commits_nothing_and_tags_failed(registered_model, gitops_remote,
                                                                          tmp_path):
    name, version = registered_model(alias="staging")
    config = tmp_path / "mlferry.yaml"
    config.write_text("environments:\n  staging:\n    aliases: [staging]\n    namespace: Not_A_Namespace\n")
    before = git_log(gitops_remote, "--format=%H")
    result = promote(name, "--alias", "staging", "--env", "staging", "--config", str(config))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlferry: error:") and "Not_A_Namespace" in last
    assert git_log(gitops_remote, "--format=%H") == before
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags["mlferry.staging.status"] == "failed" and "Not_A_Namespace" in tags["mlferry.staging.error"]


def test_an_unknown_alias_is_one_clear_line(registered_model, gitops_remote):
    name, _ = registered_model(alias="production")
    result = promote(name, "--alias", "staging", "--env", "staging")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlferry: error: promotion of {name} to staging failed: resolve: model '{name}' "
                           "has no alias 'staging' (its aliases: production) (details: mlferry runs show ")


def test_a_forged_event_writes_nothing_anywhere(registered_model, gitops_remote, s3, tmp_path):
    """An unsigned POST's parameters, submitted as the Sensor would: verify-event refuses it, and
    the failure report writes no tag, so the attacker's words never reach the registry."""
    import time

    name, version = registered_model(alias="production")
    body = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00",
                       "data": {"name": name, "alias": "production", "version": version}})
    params = {"model": name, "alias": "production", "env": "production", "trigger": "webhook",
              "delivery_id": "pipeline hacked, see http://evil.example", "timestamp": str(int(time.time())),
              "signature": "v1," + "A" * 44, "body": body}
    done = subprocess.run([sys.executable, "-m", "mlferry.cli", "submit", "--from", "workflowtemplate/mlferry-promote",
                           "--stack-dir", str(tmp_path), *[a for k, v in params.items() for a in ("-p", f"{k}={v}")]],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verify-event" in done.stdout and "rejected" in done.stdout
    tags = MlflowClient().get_model_version(name, version).tags
    assert not [k for k in tags if k.startswith("mlferry.")], tags
    assert git_log(gitops_remote, "--format=%s", "main").splitlines() == ["Initial commit"]
    assert s3.list_objects_v2(Bucket="mlferry", Prefix=f"models/{slugify(name)}/").get("KeyCount") == 0

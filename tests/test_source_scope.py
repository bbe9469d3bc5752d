"""Credentials go only where they belong: a model version whose source names another server or a
bucket outside the team's artifact store is refused before any request is sent there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from mlferry.steps.artifacts import SourceError, check_source_allowed


def promote(cwd, name: str, version: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", name, "--version", version, "--env",
                           "staging"], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "MLFLOW_TRACKING_TOKEN": "mlf_secret_token_for_the_real_server", **env})


def test_a_source_on_another_artifact_server_is_refused_before_any_request():
    # MLflow 3.17 itself refuses to register such a source unless its server sets
    # MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES; a server that does, or an older one, would
    # hand mlferry the URI, and ProxiedSource would send the MLflow token to that host.
    tracking = "http://mlflow.ml.svc:5000"
    with pytest.raises(SourceError, match=r"is on another server \(evil.example:80\) than the tracking server"):
        check_source_allowed("mlflow-artifacts://evil.example:80/stolen/model", tracking, [])
    assert check_source_allowed("mlflow-artifacts:/1/abc/artifacts/model", tracking, [])
    assert check_source_allowed("mlflow-artifacts://mlflow.ml.svc:5000/1/model", tracking, [])
    assert check_source_allowed("mlflow-artifacts://evil.example:80/x", tracking, ["mlflow-artifacts://evil.example:80/"])


def test_a_source_in_a_foreign_bucket_is_read_only_when_allowed(registered_model, gitops_remote, tmp_path):
    name, _ = registered_model()
    foreign = MlflowClient().create_model_version(name, "s3://someone-elses-bucket/model", run_id=None)
    done = promote(tmp_path, name, str(foreign.version))
    assert done.returncode == 1
    assert "s3://someone-elses-bucket/model is on a location outside the tracking server's artifact store" \
        in done.stderr
    # Allowed, mlferry reads it (and fails only because the bucket does not exist on this S3).
    allowed = promote(tmp_path, name, str(foreign.version), MLFERRY_ALLOWED_SOURCES="s3://someone-elses-bucket/")
    assert allowed.returncode == 1 and "outside the tracking server" not in allowed.stderr
    # A prefix is a folder, not a string prefix: s3://someone-elses-bucket-2 is not allowed by it.
    twin = MlflowClient().create_model_version(name, "s3://someone-elses-bucket-2/model", run_id=None)
    refused = promote(tmp_path, name, str(twin.version), MLFERRY_ALLOWED_SOURCES="s3://someone-elses-bucket")
    assert "outside the tracking server's artifact store" in refused.stderr

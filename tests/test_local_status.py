"""The local applier's manifest translation and its status file's reader: no servers needed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from mlferry.local_pod import ManifestError, local_command, pod_spec, startup_budget
from mlferry.steps.deploy_status import status_source
from mlferry.steps.local_status import STATUS_ENV, LocalSource, local_source
from mlferry.steps.render import render_folder
from mlferry.steps.settings import load_settings
from tests.test_render import make_input, make_settings

STACK_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "PATH": "/usr/bin"}


def rendered_deployment(**settings) -> dict:
    folder = render_folder(make_input(), make_settings(s3_endpoint="http://127.0.0.1:9050", **settings))
    return yaml.safe_load(folder.files["deployment.yaml"])


def test_the_rendered_deployment_runs_its_own_command_on_a_local_port_with_its_own_env(tmp_path):
    spec = pod_spec(rendered_deployment(), 43210, tmp_path / "pod", STACK_KEYS)
    assert spec.command[:3] == (sys.executable, "-m", "mlflow")  # the image's mlflow is this interpreter's
    assert spec.command[3:] == ("models", "serve", "-m", "s3://fraud-models/models/fraud-detector-cbe008eaad/7/",
                                "--host", "127.0.0.1", "--port", "43210", "--env-manager", "local")
    # secretKeyRef read from this machine's environment, as the local executor reads Secrets
    assert spec.env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE" and spec.env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert spec.env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9050"
    # HOME=/tmp is inside the pod's emptyDir: it becomes the pod's own scratch folder, and so does TMPDIR
    assert spec.env["HOME"] == spec.env["TMPDIR"] == str(tmp_path / "pod" / "tmp") and spec.scratch == (spec.env["HOME"],)
    assert spec.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert not {"MLFLOW_TRACKING_URI", "MLFERRY_GITOPS_REPO"} & set(spec.env)  # nothing else leaks in
    assert spec.probe_path == "/ping" and spec.startup_budget == 120  # 5 s × 120 = 600 s, capped for a laptop



def test_this_machines_path_is_not_moved_into_the_pods_tmp(tmp_path, monkeypatch):
    """The pod's emptyDir is mounted at /tmp; a checkout under /tmp (CI clones there) keeps its PATH."""
    monkeypatch.setattr(sys, "executable", "/tmp/ci/.venv/bin/python")
    spec = pod_spec(rendered_deployment(), 1, tmp_path / "pod", {**STACK_KEYS, "PATH": "/tmp/tools:/usr/bin"})
    assert spec.env["PATH"].split(os.pathsep) == ["/tmp/ci/.venv/bin", "/tmp/tools", "/usr/bin"]
    assert spec.env["HOME"] == str(tmp_path / "pod" / "tmp")  # the manifest's own HOME=/tmp still is the pod's


def test_a_missing_secret_key_is_what_the_kubelet_would_say(tmp_path):
    with pytest.raises(ManifestError, match="env AWS_ACCESS_KEY_ID: couldn't find key AWS_ACCESS_KEY_ID in Secret"):
        pod_spec(rendered_deployment(), 1, tmp_path, {"PATH": "/usr/bin"})


def test_host_and_port_are_rewritten_in_every_spelling():
    assert local_command(["mlflow", "models", "serve", "-h", "0.0.0.0", "-p", "8080"], 9) == [
        sys.executable, "-m", "mlflow", "models", "serve", "-h", "127.0.0.1", "-p", "9"]
    assert local_command(["/bin/server", "--host=0.0.0.0", "--port=8080", "--workers", "2"], 9) == [
        "/bin/server", "--host=127.0.0.1", "--port=9", "--workers", "2"]
    with pytest.raises(ManifestError, match="names no --port"):
        local_command(["mlflow", "models", "serve"], 9)
    assert startup_budget({}) == 30 and startup_budget({"periodSeconds": 2, "failureThreshold": 5}) == 10


def write_status(path: Path, folders: dict, pid: int | None = None) -> None:
    path.write_text(json.dumps({"remote": "r", "branch": "main", "head": "a" * 40, "updated_at": "now",
                                "pid": pid or os.getpid(), "folders": folders}))


def test_the_reader_says_what_the_applier_wrote_and_what_it_has_not(tmp_path):
    path = tmp_path / "status.json"
    source = LocalSource(path)
    missing = source.read("teams/ml/x/staging")
    assert source.name == "local" and (missing.health, missing.running) == ("Missing", False)
    assert "not running" in missing.message and "mlferry applier" in missing.message

    write_status(path, {"teams/ml/x/staging": {"revision": "a" * 40, "sync": "Synced", "health": "Healthy",
                                               "message": "serving", "endpoint": "http://127.0.0.1:1",
                                               "version": "3", "model": "x"}})
    found = source.read("teams/ml/x/staging")
    assert found.running and found.revision == "a" * 40 and found.endpoint == "http://127.0.0.1:1"
    other = source.read("teams/ml/y/staging")
    assert (other.sync, other.health) == ("OutOfSync", "Missing") and "teams/ml/y/staging" in other.message

    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    write_status(path, {"teams/ml/x/staging": {"sync": "Synced", "health": "Healthy"}}, pid=dead)
    stale = source.read("teams/ml/x/staging")
    assert stale.health == "Missing" and f"pid {dead}" in stale.message  # a killed applier's file is not believed


def test_verify_local_reads_the_applier_file_and_off_reads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(STATUS_ENV, str(tmp_path / "s.json"))
    local = status_source(load_settings(environ={"MLFERRY_VERIFY": "local"}))
    assert isinstance(local, LocalSource) and local.path == tmp_path / "s.json"
    by_stack_dir = local_source(load_settings(environ={}), {"MLFERRY_STACK_DIR": str(tmp_path)})
    assert by_stack_dir.path == tmp_path / "applier" / "status.json"
    assert status_source(load_settings(environ={})) is None


def test_folders_that_run_nothing_are_reported_and_every_folder_follows_the_head(tmp_path):
    from mlferry.applier import Applier

    applier = Applier("unused", "main", tmp_path / "status.json", STACK_KEYS)
    kserve, broken = "teams/ml/k/production", "teams/ml/b/staging"
    applier.apply("1" * 40, {kserve: {"inferenceservice.yaml": "kind: InferenceService"},
                             broken: {"deployment.yaml": "kind: Deployment\nspec: {}"},
                             "teams/ml/notes/x": {"README.md": "not a model folder"}})
    applier.write_status()
    found = json.loads((tmp_path / "status.json").read_text())
    assert set(found["folders"]) == {kserve, broken} and found["head"] == "1" * 40
    assert (found["folders"][kserve]["health"], found["folders"][kserve]["revision"]) == ("Unknown", "1" * 40)
    assert "deployment runtime only" in found["folders"][kserve]["message"]
    assert found["folders"][broken]["health"] == "Degraded" and "no container" in found["folders"][broken]["message"]
    assert LocalSource(tmp_path / "status.json").read(broken).failed

    applier.apply("2" * 40, {kserve: {"inferenceservice.yaml": "kind: InferenceService"}})  # broken removed
    assert applier.status()["folders"][kserve]["revision"] == "2" * 40 and broken not in applier.status()["folders"]
    applier.shutdown()
    assert not (tmp_path / "status.json").exists()

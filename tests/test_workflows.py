"""The generated Argo YAML: current, strictly valid, and runnable as `argo submit` would run it."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlferry.workflows.bundle import Bundle
from mlferry.generate import GENERATED_DIR, documents, to_yaml
from mlferry.engine import PlanError, load
from mlferry.engine.schema import ArgoValidationError, validate_argo
from tests.conftest import git_log

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **(env or {})})


def test_checked_in_yaml_is_what_the_code_generates():
    result = cli("generate", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in GENERATED_DIR.glob("*.yaml"))[0] == "01-workflowtemplate-mlferry-promote.yaml"


def test_check_reports_a_stale_file_with_a_diff(tmp_path):
    from mlferry.generate import render_files, stale_diff, write

    files = render_files(Bundle())
    write(files, tmp_path)
    stale = tmp_path / "01-workflowtemplate-mlferry-promote.yaml"
    stale.write_text(stale.read_text().replace("mlferry-promote", "mlferry-promote-old", 1))
    diff = stale_diff(files, tmp_path)
    assert "-  name: mlferry-promote-old" in diff and "+  name: mlferry-promote" in diff


def promote_doc() -> dict:
    return next(d for d in documents(Bundle()) if d["metadata"]["name"] == "mlferry-promote")


@pytest.mark.parametrize("where,field", [
    (lambda d: d["spec"]["templates"][0]["script"], "contaner"),
    (lambda d: d["spec"], "entrypont"),
    (lambda d: d["spec"]["templates"][-1]["dag"]["tasks"][0], "dependencie"),
    (lambda d: d["spec"]["arguments"]["parameters"][0], "vaule"),
])
def test_strict_validation_rejects_an_unknown_field(where, field):
    doc = copy.deepcopy(promote_doc())
    validate_argo(doc)  # valid as generated
    where(doc)[field] = "x"
    with pytest.raises(ArgoValidationError, match=field):
        validate_argo(doc)


def test_every_generated_object_is_strictly_valid():
    for path in sorted(GENERATED_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        validate_argo(doc, source=path.name)


def test_the_executor_refuses_a_template_with_a_dangling_task_reference():
    doc = copy.deepcopy(promote_doc())
    dag = next(t for t in doc["spec"]["templates"] if t["name"] == "promote")["dag"]
    dag["tasks"][-1]["arguments"]["parameters"][0]["value"] = "{{tasks.nonexistent.outputs.parameters.sha}}"
    with pytest.raises(PlanError, match="nonexistent"):
        load(doc)


def test_workflow_template_and_step_image_carry_the_same_version():
    from mlferry import __version__

    doc = promote_doc()
    assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == __version__
    images = {t["script"]["image"] for t in doc["spec"]["templates"] if "script" in t}
    assert images == {f"ghcr.io/mlferry/mlferry-steps:{__version__}"}


def test_only_the_git_writers_hold_the_mutex_of_their_gitops_repo():
    doc = promote_doc()
    locked = {t["name"]: t["synchronization"]["mutexes"][0]["name"]
              for t in doc["spec"]["templates"] if "synchronization" in t}
    assert sorted(locked) == ["commit", "retire"] and set(locked.values()) == {Bundle().gitops_mutex}
    other = Bundle.model_validate({"settings": {"gitops_repo": "https://git.example/other.git"}})
    assert other.gitops_mutex != Bundle().gitops_mutex


def test_submit_from_workflowtemplate_runs_the_promotion(registered_model, gitops_remote, tmp_path):
    name, version = registered_model(alias="staging")
    stack_dir = str(tmp_path / "local")
    result = cli("submit", "--from", "workflowtemplate/mlferry-promote", "-p", f"model={name}",
                 "-p", "alias=staging", "-p", "env=staging", "--stack-dir", stack_dir,
                 env={"MLFERRY_GIT_AUTHOR_NAME": "Ferry Bot", "MLFERRY_GIT_AUTHOR_EMAIL": "bot@example.org"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Status:    Succeeded" in result.stdout
    assert "Output:    folder=teams/ml/" in result.stdout and "Output:    changed=true" in result.stdout

    listing = cli("runs", "list", "--stack-dir", stack_dir)
    run_id = listing.stdout.splitlines()[1].split()[0]
    assert run_id.startswith("mlferry-promote-") and "Succeeded" in listing.stdout
    shown = cli("runs", "show", run_id, "--stack-dir", stack_dir)
    rows = {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines() if len(line.split()) > 1}
    for task in ("verify-event", "resolve", "publish", "render", "commit", "report"):
        assert rows.get(task) == "Succeeded", shown.stdout
    assert "--- publish (" in shown.stdout  # each task's log follows

    # The commit names the workflow that made it ({{workflow.name}}) apart from MLflow's training run.
    block = git_log(gitops_remote, "-1", "--format=%(trailers:only,unfold)")
    trailers = dict(line.split(": ", 1) for line in block.splitlines() if line)
    assert trailers["Workflow"] == run_id and trailers["Alias"] == "staging"
    assert trailers["Version"] == version and trailers["Training-Run"] not in ("", run_id)
    assert "Run-Id" not in trailers and "Delivery" not in trailers  # no webhook started it
    # Locally the shell's author variables reach the step (on a cluster: the ConfigMap's gitAuthor keys).
    assert git_log(gitops_remote, "-1", "--format=%an <%ae>").strip() == "Ferry Bot <bot@example.org>"


def test_submit_refuses_an_unknown_parameter_before_running(stack, tmp_path):
    result = cli("submit", "--from", "workflowtemplate/mlferry-promote", "-p", "modle=x", "-p", "env=staging",
                 "--stack-dir", str(tmp_path / "local"))
    assert result.returncode == 1 and "modle" in result.stderr
    assert not (tmp_path / "local" / "runs").exists() or not any((tmp_path / "local" / "runs").iterdir())


def test_no_step_retry_is_cut_short_by_a_max_duration():
    """Argo counts backoff.maxDuration from the first attempt and makes it each retry's deadline: a
    step that fails after it (MLflow's 60 s timeout, three tries) would never be retried."""
    from mlferry.generate import GENERATED_DIR

    for path in sorted(GENERATED_DIR.glob("*.yaml")):
        for template in (yaml.safe_load(path.read_text()).get("spec") or {}).get("templates", []):
            backoff = (template.get("retryStrategy") or {}).get("backoff") or {}
            assert "maxDuration" not in backoff and "cap" not in backoff, (path.name, template["name"])


def test_metric_names_say_what_their_values_are():
    """A gauge fed {{workflow.creationTimestamp}} holds a start time; its name and help say so, and
    the install guide names the metrics as Argo exports them (argo_workflows_ prefix, 3.6+)."""
    from mlferry.generate import GENERATED_DIR

    doc = yaml.safe_load((GENERATED_DIR / "01-workflowtemplate-mlferry-promote.yaml").read_text())
    for metric in doc["spec"]["metrics"]["prometheus"]:
        if "creationTimestamp" in json.dumps(metric.get("gauge", {})):
            assert "started" in metric["name"] and "started" in metric["help"]
    guide = (Path(__file__).resolve().parent.parent / "charts" / "README.md").read_text()
    for metric in doc["spec"]["metrics"]["prometheus"]:
        assert f"argo_workflows_{metric['name']}" in guide


def secret_keys_by_template() -> dict[str, set[str]]:
    """Every step template's Secret keys (name → keys), over all generated WorkflowTemplates."""
    keys: dict[str, set[str]] = {}
    for doc in documents(Bundle()):
        for template in doc.get("spec", {}).get("templates", []):
            container = template.get("script") or template.get("container")
            if container:
                keys.setdefault(template["name"], set()).update(
                    e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])
                    if "secretKeyRef" in e.get("valueFrom", {}))
    return keys


def test_each_step_reads_only_the_secrets_it_uses():
    keys = secret_keys_by_template()
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    git = {"MLFERRY_GIT_TOKEN", "MLFERRY_GIT_SSH_PRIVATE_KEY", "MLFERRY_GIT_SSH_KNOWN_HOSTS"}
    mlflow = {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    # The step that reads an unsigned request gets the webhook secret and nothing else.
    assert keys["verify-event"] == {"MLFERRY_WEBHOOK_SECRET"}
    assert keys["render"] == set()
    assert keys["commit"] == git | mlflow
    assert keys["publish"] == aws | mlflow
    assert keys["resolve"] == keys["report"] == mlflow
    assert keys["retire"] == keys["plan"] == keys["rollback"] == keys["commit"]
    # Only publish writes objects; only the git writers and readers hold the git credential.
    assert [name for name, held in keys.items() if held & aws] == ["publish"]
    assert {name for name, held in keys.items() if held & git} == {"commit", "retire", "plan", "rollback", "verify"}
    assert keys["give-up"] == set()


def test_the_local_executor_runs_every_workflow_template_as_generated():
    """LocalArgo builds the WorkflowTemplates without the Argo Events objects (generate.workflow_templates),
    to spare every `mlferry promote` their import: the same templates, as the YAML files carry them."""
    from mlferry.generate import workflow_templates

    generated = {d["metadata"]["name"]: yaml.safe_load(to_yaml(d)) for d in documents(Bundle())
                 if d["kind"] == "WorkflowTemplate"}
    local = {d["metadata"]["name"]: d for d in workflow_templates(Bundle())}
    assert local == generated and len(local) == 3

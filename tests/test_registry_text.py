"""Registry text reaches the steps as data, never as template text: `{{…}}`, quotes, backslashes
and control characters in names, descriptions and tags pass through promote and reconcile byte
for byte, or are refused with a clear error where Argo itself could not carry them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

from mlferry.steps.event_filter import accept
from mlferry.steps.naming import slugify
from mlferry.steps.settings import Settings
from tests.models import register_model

TRICKY = 'uses {{workflow.name}}, {{7*7}} and }} "quoted" \\back\\slash \x1b[31mred\x1b[0m\nsecond line \u202eevil'


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, **env})


def annotations(remote: Path, folder: str) -> dict[str, str]:
    text = subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{folder}/deployment.yaml"],
                          capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(text)["metadata"]["annotations"]


def test_braces_quotes_and_control_characters_in_a_description_and_a_tag_arrive_intact(stack, gitops_remote,
                                                                                      tmp_path, unique_name):
    name, version = register_model(unique_name, description=TRICKY, git_commit="{{inputs.parameters.x}} \"c\"")
    done = cli(tmp_path, "promote", name, "--version", version, "--env", "staging")
    assert done.returncode == 0, done.stdout + done.stderr
    found = annotations(gitops_remote, f"teams/ml/{slugify(name)}/staging")
    assert found["mlferry.io/description"] == TRICKY
    assert found["mlferry.io/source-commit"] == "{{inputs.parameters.x}} \"c\""


def test_quotes_and_backslashes_in_a_model_name_survive_reconciles_fan_out(stack, gitops_remote, tmp_path,
                                                                          unique_name):
    alias = f"fan-{unique_name[-8:]}"
    (tmp_path / "mlferry.yaml").write_text(f"environments:\n  staging: {{aliases: [{alias}]}}\n")
    name, _ = register_model(f'{unique_name} "quoted" back\\slash', alias=alias)
    done = cli(tmp_path, "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert annotations(gitops_remote, f"teams/ml/{slugify(name)}/staging")["mlferry.io/model-name"] == name


def test_a_model_name_argo_would_read_as_a_template_is_refused_with_the_reason(stack, gitops_remote, tmp_path,
                                                                              unique_name):
    name, version = register_model(f"{unique_name}-{{{{7*7}}}}")
    done = cli(tmp_path, "promote", name, "--version", version, "--env", "staging")
    assert done.returncode == 1
    assert "holds '{{', which Argo reads as a template variable" in done.stderr and "rename" in done.stderr
    event = {"entity": "model_version_alias", "action": "created",
             "data": {"name": name, "alias": "staging", "version": version}}
    decision = accept(event, Settings())
    assert not decision.accepted and "template variable" in decision.reason
    assert MlflowClient().get_model_version(name, version).tags.get("mlferry.staging.status") is None

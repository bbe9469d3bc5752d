"""Settings flags and `mlferry config`: one precedence rule, flag > variable > file > default."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from mlferry.cli import _parser, export_setting_flags
from mlferry.steps.naming import slugify
from tests.test_promote import promote, show

SETTING_VARS = ("MLFERRY_TEAM", "MLFERRY_BUCKET", "MLFERRY_GITOPS_REPO", "MLFERRY_GITOPS_BRANCH", "MLFERRY_RUNTIME",
                "MLFERRY_SERVING_IMAGE", "MLFERRY_S3_SECRET", "MLFERRY_PRUNE", "MLFERRY_CONFIG",
                "MLFERRY_SETTINGS", "MLFLOW_S3_ENDPOINT_URL")


def config(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mlferry config` in a clean environment (no shell variables, no local stack)."""
    base = {k: v for k, v in os.environ.items() if k not in SETTING_VARS}
    base["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # a local stack would add its variables
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "config", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**base, **(env or {})})


def test_config_shows_each_source(tmp_path):
    (tmp_path / "mlferry.yaml").write_text("team: fraud\nbucket: file-bucket\nruntime: kserve\n")
    result = config("--bucket", "flag-bucket", cwd=tmp_path, env={"MLFERRY_RUNTIME": "deployment"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1].split("=")[0]: line.split() for line in result.stdout.splitlines()}
    assert lines["team"] == [f"file:{tmp_path / 'mlferry.yaml'}", "team=fraud"]
    assert lines["bucket"] == ["flag:--bucket", "bucket=flag-bucket"]
    assert lines["runtime"] == ["variable:MLFERRY_RUNTIME", "runtime=deployment"]
    assert lines["prune"] == ["default", "prune=true"]


def test_config_json_and_precedence_flag_over_variable_over_file_over_default(tmp_path):
    named = tmp_path / "named.yaml"
    named.write_text("team: file-team\nbucket: file-bucket\ngitops_branch: file-branch\n")
    env = {"MLFERRY_CONFIG": str(named), "MLFERRY_TEAM": "env-team", "MLFERRY_BUCKET": "env-bucket"}
    result = config("--json", "--team", "flag-team", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["team"] == {"value": "flag-team", "source": "flag", "name": "--team"}
    assert shown["bucket"] == {"value": "env-bucket", "source": "variable", "name": "MLFERRY_BUCKET"}
    assert shown["gitops_branch"] == {"value": "file-branch", "source": "file", "name": str(named)}
    assert shown["runtime"] == {"value": "deployment", "source": "default", "name": ""}
    # --config wins over $MLFERRY_CONFIG for the file
    other = tmp_path / "other.yaml"
    other.write_text("gitops_branch: other\n")
    shown = json.loads(config("--json", "--config", "other.yaml", cwd=tmp_path, env=env).stdout)
    assert shown["gitops_branch"] == {"value": "other", "source": "file", "name": str(other)}


def test_a_bad_flag_value_is_one_line(tmp_path):
    result = config("--team", "Bad_Team", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("mlferry: error: invalid mlferry settings: team: Value error, "
                                     "team 'Bad_Team' must be a DNS-1123 label (lowercase letters, digits, '-')")


@pytest.mark.parametrize("command", [["promote", "m", "--version", "1", "--env", "staging"], ["reconcile"],
                                     ["submit", "--from", "workflowtemplate/mlferry-reconcile"], ["events", "serve"],
                                     ["status"], ["history", "m"]])
def test_the_commands_take_the_settings_flags_and_export_them(command):
    before = dict(os.environ)
    args = _parser().parse_args([*command, "--team", "flag-team", "--bucket", "b", "--runtime", "kserve",
                                 "--serving-image", "img:2", "--gitops-repo", "/r", "--gitops-branch", "br"])
    assert (args.team, args.runtime) == ("flag-team", "kserve")
    assert dict(os.environ) == before  # parsing has no side effect: nothing leaks into this process
    environ = {"MLFERRY_TEAM": "from-shell", "PATH": "/bin"}
    export_setting_flags(args, environ)
    assert environ == {
        "PATH": "/bin", "MLFERRY_TEAM": "flag-team", "MLFERRY_BUCKET": "b", "MLFERRY_RUNTIME": "kserve",
        "MLFERRY_SERVING_IMAGE": "img:2", "MLFERRY_GITOPS_REPO": "/r", "MLFERRY_GITOPS_BRANCH": "br"}


def test_config_reports_flags_without_exporting_them():
    args = _parser().parse_args(["config", "--team", "flag-team"])
    environ: dict[str, str] = {}
    export_setting_flags(args, environ)
    assert args.team == "flag-team" and environ == {}


def test_promote_flags_win_over_variables_and_file_inside_the_steps(registered_model, gitops_remote, tmp_path):
    name, _ = registered_model(alias="production")
    file = tmp_path / "mlferry.yaml"
    file.write_text("team: file-team\nruntime: deployment\n")
    result = promote(name, "--alias", "production", "--env", "production", "--config", str(file),
                     "--team", "flag-team", "--runtime", "kserve", env={"MLFERRY_TEAM": "env-team"})
    assert result.returncode == 0, result.stderr
    folder = f"teams/flag-team/{slugify(name)}/production"
    kustomization = yaml.safe_load(show(gitops_remote, f"{folder}/kustomization.yaml"))
    assert sorted(kustomization["resources"]) == ["inferenceservice.yaml", "serviceaccount.yaml"]
    service = yaml.safe_load(show(gitops_remote, f"{folder}/inferenceservice.yaml"))
    assert service["metadata"]["namespace"] == "flag-team-production"

"""Settings: file < MLFERRY_SETTINGS < environment < flags, and clear errors."""

import pytest

from mlferry.steps.settings import SettingsError, load_settings


def test_sources_in_order_of_strength(tmp_path):
    file = tmp_path / "mlferry.yaml"
    file.write_text("team: from-file\nbucket: file-bucket\ngitops_branch: file-branch\n")
    env = {"MLFERRY_BUCKET": "env-bucket", "MLFERRY_GITOPS_BRANCH": "env-branch"}
    settings = load_settings(file, environ=env, overrides={"gitops_branch": "flag-branch"})
    assert (settings.team, settings.bucket, settings.gitops_branch) == ("from-file", "env-bucket", "flag-branch")


def test_settings_handed_over_by_the_configmap():
    settings = load_settings(environ={"MLFERRY_SETTINGS": "team: fraud\nruntime: kserve\n",
                                      "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"})
    assert (settings.team, settings.runtime, settings.s3_endpoint) == ("fraud", "kserve", "http://minio:9000")


def test_environments_map_aliases_and_stages():
    settings = load_settings(environ={})
    assert settings.environment_for_alias("champion") == "production"
    assert settings.environment_for_stage("staging") == "staging"
    assert settings.environment_for_alias("nope") is None
    assert settings.namespace("production") == "ml-production"


@pytest.mark.parametrize("text,message", [
    ("team: Bad_Team\n", "team 'Bad_Team' must be a DNS-1123 label"),
    ("runtime: lambda\n", "runtime: Input should be 'deployment' or 'kserve'"),
    ("tema: typo\n", "tema: Extra inputs are not permitted"),
    ("environments: {Prod: {aliases: [p]}}\n", "environment name 'Prod'"),
    ("environments: {a: {aliases: [x]}, b: {aliases: [x]}}\n", "alias 'x' is mapped to both 'a' and 'b'"),
    ("- a list\n", "must hold a mapping"),
])
def test_bad_settings_name_the_problem(tmp_path, text, message):
    file = tmp_path / "mlferry.yaml"
    file.write_text(text)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(file, environ={})


def test_a_missing_settings_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_an_unknown_environment_lists_the_configured_ones():
    with pytest.raises(SettingsError, match="unknown environment 'qa'; configured environments: production, staging"):
        load_settings(environ={}).environment("qa")

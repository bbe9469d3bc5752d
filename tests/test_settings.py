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


def test_the_serving_endpoint_is_not_the_promoters():
    """A step pod's ConfigMap sets MLFLOW_S3_ENDPOINT_URL to where the promoter reaches MinIO; the
    settings' s3_endpoint (where serving pods reach it) must survive it (issue 16, point 11)."""
    pod = {"MLFERRY_SETTINGS": "s3_endpoint: http://minio.ml-serving.svc:9000\n",
           "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert load_settings(environ=pod).s3_endpoint == "http://minio.ml-serving.svc:9000"
    assert load_settings(environ={**pod, "MLFERRY_S3_ENDPOINT": "http://other:9000"}).s3_endpoint == "http://other:9000"
    assert load_settings(environ={"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}).s3_endpoint == \
        "http://127.0.0.1:9000"  # nothing else says: the one endpoint there is


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


# -- one precedence rule, with origins (issue 13.8) ----------------------------------------------

from mlferry.steps.settings import ENV_VARS, Settings, load_settings_with_origins  # noqa: E402


def test_each_value_says_where_it_came_from(tmp_path):
    file = tmp_path / "mlferry.yaml"
    file.write_text("team: from-file\nbucket: file-bucket\nruntime: kserve\ns3_endpoint: http://file:9000\n")
    env = {"MLFERRY_BUCKET": "env-bucket", "MLFLOW_S3_ENDPOINT_URL": "http://env:9000", "MLFERRY_TEAM": ""}
    settings, origins = load_settings_with_origins(file, environ=env, overrides={"runtime": "deployment",
                                                                                 "team": None})
    assert (settings.team, settings.bucket, settings.runtime, settings.s3_endpoint) == (
        "from-file", "env-bucket", "deployment", "http://file:9000")
    assert origins["team"] == ("file", str(file.resolve()))  # an empty variable and a None flag are unset
    assert origins["bucket"] == ("variable", "MLFERRY_BUCKET")
    # MLflow's own variable is where this process reaches the store, so it never beats the file
    assert origins["s3_endpoint"] == ("file", str(file.resolve()))
    assert origins["runtime"] == ("flag", "--runtime")
    assert origins["prune"] == ("default", "")
    assert list(origins) == list(Settings.model_fields)


def test_the_file_is_config_else_mlferry_config_else_the_working_folder(tmp_path, monkeypatch):
    here, named, given = (tmp_path / n for n in ("mlferry.yaml", "named.yaml", "given.yaml"))
    here.write_text("team: here\n")
    named.write_text("team: named\n")
    given.write_text("team: given\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).team == "here"
    assert load_settings(environ={"MLFERRY_CONFIG": str(named)}).team == "named"
    assert load_settings(given, environ={"MLFERRY_CONFIG": str(named)}).team == "given"
    # MLFERRY_SETTINGS (a pod's ConfigMap) stands in only when there is no file at all
    assert load_settings(environ={"MLFERRY_SETTINGS": "team: configmap\n"}).team == "here"


def test_every_variable_sets_its_field():
    values = {"team": "t", "bucket": "b", "gitops_repo": "/r", "gitops_branch": "br", "runtime": "kserve",
              "serving_image": "img:1", "s3_secret": "sec", "prune": "false", "prune_max_share": "0.25",
              "gitops_create_branch": "true", "allowed_sources": "s3://a/, s3://b/",
              "s3_endpoint": "http://serving:9000", "verify": "local"}
    settings = load_settings(environ={var: values[field] for var, field in ENV_VARS.items()})
    assert settings.model_dump(include=set(values)) == {**values, "prune": False, "prune_max_share": 0.25,
                                                         "gitops_create_branch": True,
                                                         "allowed_sources": ["s3://a/", "s3://b/"],
                                                         "s3_endpoint": "http://serving:9000"}


def test_the_bundle_reads_the_same_file_and_takes_flags(tmp_path):
    from mlferry.workflows.bundle import load_bundle

    file = tmp_path / "team.yaml"
    file.write_text("team: fraud\nbundle:\n  namespace: fraud-argo\n")
    bundle = load_bundle(None, environ={"MLFERRY_CONFIG": str(file), "MLFERRY_TEAM": "env-team"},
                         overrides={"team": "flag-team"})
    assert (bundle.namespace, bundle.settings.team) == ("fraud-argo", "flag-team")
    assert load_bundle(file, overrides={"runtime": "kserve"}).settings.runtime == "kserve"


# -- the reference and the example cannot rot ---------------------------------------------------

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "mlferry.example.yaml"
REFERENCE = ROOT / "docs" / "configuration.md"


def _keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        yield prefix + name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name != "settings":
            yield from _keys(annotation, f"{prefix}{name}.")


def test_the_example_file_loads_and_holds_every_key_at_its_default():
    import yaml

    from mlferry.workflows.bundle import Bundle, load_bundle

    settings = load_settings(EXAMPLE, environ={})
    bundle = load_bundle(EXAMPLE)
    assert settings == Settings(serving_image=settings.serving_image)
    assert bundle.model_dump(exclude={"image", "settings"}) == Bundle().model_dump(exclude={"image", "settings"})
    raw = yaml.safe_load(EXAMPLE.read_text())
    flat = set()

    def walk(data, prefix=""):
        for key, value in data.items():
            flat.add(prefix + key)
            if isinstance(value, dict) and key != "environments":
                walk(value, f"{prefix}{key}.")

    walk(raw)
    missing = {k for k in _keys(Settings)} | {f"bundle.{k}" for k in _keys(Bundle) if k != "settings"}
    assert missing - flat == set()


def test_the_reference_names_every_key_and_every_variable_the_product_reads():
    import re

    from mlferry.workflows.bundle import Bundle

    text = REFERENCE.read_text()
    keys = {*_keys(Settings), *(f"bundle.{k}" for k in _keys(Bundle) if k != "settings")}
    assert {k for k in keys if f"`{k}`" not in text} == set()
    read = set()
    for folder in ("steps", "mlferry", "workflows"):
        for path in (ROOT / folder).rglob("*.py"):
            read |= {v for v in re.findall(r"MLFERRY_[A-Z0-9_]+", path.read_text()) if not v.endswith("_")}
    assert read, "no MLFERRY_ variable found: the scan is broken"
    assert {v for v in read if f"`{v}`" not in text} == set()
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()

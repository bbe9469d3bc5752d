"""Per-model serving settings from registered-model tags: checked in resolve, applied in render."""

import subprocess

import pytest
import yaml
from mlflow import MlflowClient

from mlferry.steps.model_settings import ModelServing, ModelTagError, serving_from_tags
from mlferry.steps.naming import slugify
from mlferry.steps.render import RenderInput, render_folder
from mlferry.steps.settings import load_settings
from tests.conftest import git_log
from tests.test_promote import promote, show


def test_tags_become_typed_settings_and_other_tags_are_ignored():
    serving = serving_from_tags({"mlferry.replicas": "3", "mlferry.cpu_request": "500m",
                                 "mlferry.memory_limit": "2Gi", "mlferry.runtime": "kserve",
                                 "mlferry.staging.status": "committed", "owner": "ds-team"})
    assert serving == ModelServing(replicas=3, cpu_request="500m", memory_limit="2Gi", runtime="kserve")
    assert serving_from_tags({}) == ModelServing()
    assert serving_from_tags({"mlferry.replicas": "0"}).replicas == 0


@pytest.mark.parametrize("tag,value,message", [
    ("replicas", "lots", "registered-model tag mlferry.replicas='lots' must be a whole number from 0 to 100"),
    ("replicas", "101", "mlferry.replicas='101' must be a whole number from 0 to 100"),
    ("replicas", "-1", "mlferry.replicas='-1' must be a whole number"),
    ("replicas", "2.5", "mlferry.replicas='2.5' must be a whole number"),
    ("cpu_request", "a lot", "registered-model tag mlferry.cpu_request='a lot' must be a Kubernetes quantity"),
    ("memory_limit", "1GB", "mlferry.memory_limit='1GB' must be a Kubernetes quantity"),
    ("cpu_limit", "", "mlferry.cpu_limit='' must be a Kubernetes quantity"),
    ("runtime", "lambda", "registered-model tag mlferry.runtime='lambda' must be one of: deployment, kserve"),
])
def test_a_bad_tag_is_one_line_naming_tag_value_and_rule(tag, value, message):
    with pytest.raises(ModelTagError) as caught:
        serving_from_tags({f"mlferry.{tag}": value})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _render(serving: ModelServing, **settings):
    inputs = RenderInput(model="wine", version="4", slug=slugify("wine"), env="production", serving=serving)
    return render_folder(inputs, load_settings(environ={}, overrides=settings)).files


def test_render_applies_the_model_settings_over_the_team_settings():
    plain = yaml.safe_load(_render(ModelServing())["deployment.yaml"])
    assert plain["spec"]["replicas"] == 1
    files = _render(ModelServing(replicas=3, cpu_request="500m", memory_limit="2Gi"))
    deployment = yaml.safe_load(files["deployment.yaml"])
    assert deployment["spec"]["replicas"] == 3
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    kserve = _render(ModelServing(runtime="kserve", replicas=2), runtime="deployment")
    assert sorted(kserve) == ["inferenceservice.yaml", "kustomization.yaml", "serviceaccount.yaml"]
    assert yaml.safe_load(kserve["inferenceservice.yaml"])["spec"]["predictor"]["minReplicas"] == 2


def test_promote_applies_the_registered_model_tags(registered_model, gitops_remote):
    name, version = registered_model(alias="production")
    client = MlflowClient()
    for key, value in {"mlferry.replicas": "3", "mlferry.cpu_limit": "2", "mlferry.memory_request": "1Gi"}.items():
        client.set_registered_model_tag(name, key, value)
    result = promote(name, "--alias", "production", "--env", "production")
    assert result.returncode == 0, result.stderr
    deployment = yaml.safe_load(show(gitops_remote, f"teams/ml/{slugify(name)}/production/deployment.yaml"))
    assert deployment["spec"]["replicas"] == 3
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}


def test_a_bad_tag_fails_the_promotion_before_anything_is_copied_or_committed(registered_model, gitops_remote,
                                                                              s3):
    name, _ = registered_model(alias="production")
    MlflowClient().set_registered_model_tag(name, "mlferry.replicas", "lots")
    before = git_log(gitops_remote, "--format=%H")
    result = promote(name, "--alias", "production", "--env", "production")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlferry: error: promotion of {name} to production failed: resolve: "
                           "registered-model tag mlferry.replicas='lots' must be a whole number from 0 to 100")
    assert git_log(gitops_remote, "--format=%H") == before
    listed = s3.list_objects_v2(Bucket="mlferry", Prefix=f"models/{slugify(name)}/")
    assert listed.get("KeyCount", 0) == 0


def test_a_request_above_its_limit_names_both_sources():
    from mlferry.steps.resolve import _model_serving

    settings = load_settings(environ={})
    with pytest.raises(ModelTagError, match=r"registered-model tag mlferry.cpu_request='4' is more than "
                                            r"resources.cpu_limit='1': a cpu request must not exceed its limit"):
        _model_serving({"mlferry.cpu_request": "4"}, settings)
    with pytest.raises(ModelTagError, match=r"resources.memory_request='512Mi' is more than registered-model tag "
                                            r"mlferry.memory_limit='256Mi'"):
        _model_serving({"mlferry.memory_limit": "256Mi"}, settings)
    assert _model_serving({"mlferry.cpu_request": "1500m", "mlferry.cpu_limit": "2"}, settings).cpu_request == "1500m"


def test_team_resources_are_quantities_too(tmp_path):
    from mlferry.steps.settings import SettingsError

    file = tmp_path / "mlferry.yaml"
    file.write_text("resources: {memory_limit: 1GB}\n")
    with pytest.raises(SettingsError, match="resources.memory_limit '1GB' must be a Kubernetes quantity"):
        load_settings(file, environ={})

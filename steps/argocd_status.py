"""argocd_status: what an environment runs on a cluster, read from the Argo CD Application of its folder.

The ApplicationSet (charts/mlferry/templates/argocd.yaml) makes one Application per GitOps folder
`teams/<team>/<slug>/<env>`, named by `application_name`. Its status says which commit Argo CD
last synced (`status.sync.revision`), whether the cluster matches it (`status.sync.status`) and
whether what it deployed is healthy (`status.health.status`): the three facts of a DeployStatus.

The Application is read through the official `kubernetes` client: in a pod with the pod's own
ServiceAccount (the chart's Role in Argo CD's namespace allows `get` on Applications), on a laptop
with the kubeconfig (`KUBECONFIG`, else ~/.kube/config).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

from mlferry.steps.deploy_status import DeployStatus
from mlferry.steps.layout import gitops_folder, parse_gitops_folder
from mlferry.steps.outcome import TransientError
from mlferry.steps.trailers import one_line

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "applications"
# A name longer than a label (Argo CD's label tracking writes it into one) keeps its first
# NAME_KEPT characters and ends in "-" and HASH_DIGITS hex digits of the folder path's sha256.
MAX_NAME, NAME_KEPT, HASH_DIGITS = 63, 54, 8
# (connect, read) seconds for one request: the verify step polls, so one slow answer is just retried.
REQUEST_TIMEOUT = (5, 15)
# Argo CD calls a condition an error when its type ends so (ApplicationCondition.IsError).
ERROR_SUFFIX = "Error"
FAILED_PHASES = ("Failed", "Error")  # operationState.phase of a sync that did not complete


class ArgoCDUnavailable(TransientError):
    """The Kubernetes API did not answer about an Application (network, 5xx, no permission yet)."""


def application_name(team: str, slug: str, env: str) -> str:
    """The name the ApplicationSet gives the folder's Application: `<team>-<slug>-<env>`, or, when
    that is longer than 63 characters, its first 54, "-" and 8 hex digits of the folder path's sha256
    (the Go template in charts/mlferry/templates/argocd.yaml; tests/test_argocd_status.py runs both)."""
    folder = gitops_folder(team, slug, env)
    name = f"{team}-{slug}-{env}"
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:NAME_KEPT]}-{hashlib.sha256(folder.encode()).hexdigest()[:HASH_DIGITS]}"


def status_from_application(app: Mapping[str, Any]) -> DeployStatus:
    """The DeployStatus an Argo CD Application reports; an Application without status yet (just
    made by the ApplicationSet, not reconciled) is Unknown, not an error."""
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    health = status.get("health") or {}
    return DeployStatus(
        revision=str(sync.get("revision") or ""),
        sync=str(sync.get("status") or "Unknown"),
        health=str(health.get("status") or "Unknown"),
        message=one_line(_message(status), 500),
    )


def _message(status: Mapping[str, Any]) -> str:
    """Why it is not healthy, for people: the health message (the Application's, else the first
    unhealthy resource's, when Argo CD keeps resource health in the status), else a failed sync's
    message, else the first error condition (e.g. ComparisonError: the folder does not render)."""
    health = (status.get("health") or {}).get("message")
    if health:
        return str(health)
    for resource in status.get("resources") or []:
        resource_health = resource.get("health") or {}
        if resource_health.get("status") not in (None, "Healthy") and resource_health.get("message"):
            return f"{resource.get('kind', '?')}/{resource.get('name', '?')}: {resource_health['message']}"
    operation = status.get("operationState") or {}
    if operation.get("phase") in FAILED_PHASES and operation.get("message"):
        return f"sync {str(operation['phase']).lower()}: {operation['message']}"
    for condition in status.get("conditions") or []:
        if str(condition.get("type", "")).endswith(ERROR_SUFFIX) and condition.get("message"):
            return f"{condition['type']}: {condition['message']}"
    return ""


class ArgoCDSource:
    """The StatusSource of a cluster: the Application of each folder, in Argo CD's namespace."""

    name = "argocd"

    def __init__(self, namespace: str, api: Any = None) -> None:
        self.namespace = namespace
        self._api = api  # a kubernetes.client.CustomObjectsApi; made on the first read when None

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = custom_objects_api()
        return self._api

    def read(self, folder: str) -> DeployStatus:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as ConnectionFailure

        team, slug, env = parse_gitops_folder(folder)
        name = application_name(team, slug, env)
        try:
            app = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                        _request_timeout=REQUEST_TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return DeployStatus(health="Missing", message=(
                    f"no Application {name} in {self.namespace} yet: the ApplicationSet makes it when "
                    f"Argo CD next reads {folder} from the GitOps repo"))
            raise ArgoCDUnavailable(f"cannot read Application {name} in {self.namespace}: "
                                    f"{_api_reason(err)}") from None
        except (OSError, ConnectionFailure) as err:  # refused, timed out, TLS, a broken answer
            raise ArgoCDUnavailable(f"cannot read Application {name} in {self.namespace}: "
                                    f"the Kubernetes API did not answer ({type(err).__name__}: {err})") from None
        return status_from_application(app)


def _api_reason(err: Any) -> str:
    what = f"HTTP {err.status} {err.reason or ''}".strip()
    if err.status in (401, 403):
        return (f"{what}: this identity may not get Applications there (the mlferry chart grants it "
                "with argocd.enabled; argocd.namespace must be where the Applications are)")
    return what


def custom_objects_api(kubeconfig: str | None = None) -> Any:
    """A CustomObjectsApi as this process reaches the cluster: the pod's ServiceAccount when it
    runs in one, else the kubeconfig (`kubeconfig`, `KUBECONFIG`, ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        # The client reads KUBECONFIG once, when it is imported; this reads it when asked.
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
                                client_configuration=configuration)
    return client.CustomObjectsApi(client.ApiClient(configuration))


def argocd_source(settings: Any) -> ArgoCDSource:
    """The source for `verify: argocd`: the Applications in `settings.argocd_namespace`."""
    return ArgoCDSource(settings.argocd_namespace)

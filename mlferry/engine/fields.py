"""Which fields of an Argo document the local engine acts on, and the check that every field is one.

Every field of the document is in one of three groups:

- implemented: the local executor does what Argo does with it (the `_IMPLEMENTED` table);
- no local effect: the field only matters to a cluster (scheduling, pod placement, garbage
  collection, metadata), so running on this machine without it is running it faithfully
  (the `_NO_LOCAL_EFFECT` table);
- everything else, which is an error at load time naming the field's path: an Argo feature the
  executor does not implement must never be silently skipped.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

API_VERSION = "argoproj.io/v1alpha1"
WORKFLOW_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
LEAF_TYPES = ("script", "container")
TEMPLATE_TYPES = ("dag", "steps", "script", "container")

_CONTAINER = {"command", "args", "env", "envFrom"}

# What the executor implements, per kind of object.
_IMPLEMENTED: dict[str, set[str]] = {
    "document": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"entrypoint", "templates", "arguments", "parallelism", "activeDeadlineSeconds",
             "synchronization", "onExit", "workflowTemplateRef"},
    "cron": {"workflowSpec"},
    "template": {"name", "inputs", "outputs", "dag", "steps", "script", "container", "retryStrategy",
                 "activeDeadlineSeconds", "parallelism", "synchronization"},
    "dag": {"tasks", "failFast"},
    "task": {"name", "template", "arguments", "depends", "dependencies", "when", "withItems", "withParam",
             "continueOn"},
    "step": {"name", "template", "arguments", "when", "withItems", "withParam", "continueOn"},
    "arguments": {"parameters"},
    "inputs": {"parameters"},
    "outputs": {"parameters"},
    "parameter": {"name", "value", "default", "enum", "description", "valueFrom"},
    "container": _CONTAINER,
    "script": _CONTAINER | {"source"},
    "env": {"name", "value", "valueFrom"},
    "envSource": {"configMapKeyRef", "secretKeyRef"},
    "keyRef": {"name", "key", "optional"},
    "envFrom": {"configMapRef", "secretRef", "prefix"},
    "envFromRef": {"name", "optional"},
    "retryStrategy": {"limit", "retryPolicy", "backoff", "expression"},
    "backoff": {"duration", "factor", "maxDuration", "cap"},
    "synchronization": {"mutexes", "semaphores", "mutex", "semaphore"},  # v3.6+ lists; v3 singular
    "mutex": {"name", "namespace"},
    "semaphore": {"configMapKeyRef", "namespace"},
    "continueOn": {"failed", "error"},
    "templateRef": {"name", "clusterScope"},
}

# Fields that only a cluster acts on: accepted, and without local behaviour by design.
_NO_LOCAL_EFFECT: dict[str, set[str]] = {
    "document": {"status"},  # what `argo get -o yaml` adds; the executor writes its own record
    "spec": {
        "podGC", "ttlStrategy", "serviceAccountName", "automountServiceAccountToken", "securityContext",
        "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "podMetadata", "podPriorityClassName",
        "priority", "schedulerName", "workflowMetadata", "archiveLogs", "artifactGC", "artifactRepositoryRef",
        "metrics", "podDisruptionBudget", "executor", "dnsPolicy", "volumeClaimGC", "podResources",
    },
    # A CronWorkflow runs its workflowSpec once locally; when and how often is the scheduler's business.
    "cron": {"schedule", "schedules", "timezone", "concurrencyPolicy", "startingDeadlineSeconds",
             "successfulJobsHistoryLimit", "failedJobsHistoryLimit", "suspend", "workflowMetadata", "stopStrategy"},
    "template": {"metadata", "nodeSelector", "affinity", "tolerations", "schedulerName", "priorityClassName",
                 "serviceAccountName", "automountServiceAccountToken", "securityContext", "metrics",
                 "archiveLocation", "executor", "podResources", "pendingTimeout"},
    # Local processes run in this machine's Python environment, not in the image.
    "container": {"name", "image", "imagePullPolicy", "resources", "securityContext", "terminationMessagePath",
                  "terminationMessagePolicy"},
    "script": {"name", "image", "imagePullPolicy", "resources", "securityContext", "terminationMessagePath",
               "terminationMessagePolicy"},
    "retryStrategy": {"affinity"},  # "retry on another node": there is one node
    "mutex": {"database"},  # database-backed or not, a mutex excludes; the local one is a file lock
    "semaphore": {"database"},
}


def check_fields(obj: Any, path: str, kind: str, problems: list[str]) -> bool:
    """Report fields of `obj` that are neither implemented nor inert; False if obj is no mapping."""
    if not isinstance(obj, dict):
        problems.append(f"{path or '<document>'}: expected a mapping, got {type(obj).__name__}")
        return False
    known = _IMPLEMENTED[kind] | _NO_LOCAL_EFFECT.get(kind, set())
    for key in obj:
        if key not in known:
            problems.append(unknown_field(join(path, key), key, known))
    return True


def unknown_field(path: str, key: str, known: set[str]) -> str:
    guess = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{path}: not supported by the local executor: an unknown field, or an Argo feature it does not implement{hint}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def list_items(obj: Any, path: str, problems: list[str]) -> list[tuple[str, Any]]:
    """(path, item) for each element of a list, the path naming the item when it has a name."""
    if obj is None:
        return []
    if not isinstance(obj, list):
        problems.append(f"{path}: expected a list")
        return []
    return [(f"{path}[{x['name'] if isinstance(x, dict) and 'name' in x else i}]", x) for i, x in enumerate(obj)]


def is_leaf(t: Mapping[str, Any]) -> bool:
    """A template that runs a process (script, container), not other templates."""
    return any(k in t for k in LEAF_TYPES)


def node_type(t: Mapping[str, Any]) -> str:
    """The node type Argo records for a call of `t`."""
    return "DAG" if "dag" in t else "Steps" if "steps" in t else "Pod"

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


# Argo features the executor refuses, and what Argo would do with each: the sentence a refusal
# gives, so that a user knows what their workflow would have done on a cluster.
REFUSED: dict[str, dict[str, str]] = {
    "spec": {
        "volumes": "mounts these Kubernetes volumes into the pods that name them",
        "volumeClaimTemplates": "creates a PersistentVolumeClaim per workflow for its pods to share",
        "hooks": "runs lifecycle hooks when the workflow reaches a phase or an expression turns true",
        "templateDefaults": "merges these defaults into every template",
        "retryStrategy": "retries every template with this strategy unless it has its own",
        "podSpecPatch": "patches every pod's spec with this JSON",
        "suspend": "holds the workflow until `argo resume`",
        "shutdown": "stops or terminates the running workflow",
        "hostNetwork": "runs the pods in the node's network namespace",
        "dnsConfig": "sets the pods' DNS configuration",
        "hostAliases": "adds entries to the pods' /etc/hosts",
    },
    "template": {
        "resource": "creates, applies, patches or deletes a Kubernetes object",
        "suspend": "pauses here until `argo resume` or the duration ends",
        "http": "sends this HTTP request from its agent pod",
        "plugin": "calls an executor plugin",
        "data": "transforms an artifact listing",
        "containerSet": "runs several containers in one pod",
        "sidecars": "starts these containers beside the main one",
        "initContainers": "runs these containers before the main one",
        "daemon": "keeps the pod running for the steps that follow",
        "memoize": "reuses cached outputs from a ConfigMap and skips the step when they exist",
        "podSpecPatch": "patches the pod's spec with this JSON",
        "volumes": "mounts these Kubernetes volumes into the pod",
        "timeout": "fails the node when it has not finished within this duration, Pending time included",
        "failFast": "stops starting new items once one fails",
        "hostAliases": "adds entries to the pod's /etc/hosts",
    },
    "task": {
        "templateRef": "calls a template of another WorkflowTemplate",
        "inline": "runs the template written inside the task",
        "withSequence": "fans the task out over a range of numbers",
        "hooks": "runs lifecycle hooks when the task or step reaches a phase",
        "onExit": "runs this template when the task or step ends",
    },
    "inputs": {"artifacts": "downloads these files from an artifact repository (S3, GCS, git, HTTP, …) into the pod"},
    "outputs": {"artifacts": "uploads these files to the artifact repository for later steps",
                "result": "sets the template's result", "exitCode": "sets the template's exit code"},
    "arguments": {"artifacts": "passes these artifacts to the template's inputs"},
    "container": {
        "volumeMounts": "mounts volumes into the container",
        "workingDir": "starts the command in this folder",
        "ports": "opens these container ports",
        "lifecycle": "runs postStart / preStop handlers",
        "readinessProbe": "probes the container for readiness",
        "livenessProbe": "restarts the container when the probe fails",
        "stdin": "keeps stdin open",
    },
}
REFUSED["step"] = REFUSED["task"]
REFUSED["script"] = REFUSED["container"]


def check_fields(obj: Any, path: str, kind: str, problems: list[str]) -> bool:
    """Report fields of `obj` that are neither implemented nor inert; False if obj is no mapping."""
    if not isinstance(obj, dict):
        problems.append(f"{path or '<document>'}: expected a mapping, got {type(obj).__name__}")
        return False
    known = _IMPLEMENTED[kind] | _NO_LOCAL_EFFECT.get(kind, set())
    for key in obj:
        if key not in known:
            problems.append(unknown_field(join(path, key), key, known, kind))
    return True


def unknown_field(path: str, key: str, known: set[str], kind: str = "") -> str:
    argo_does = REFUSED.get(kind, {}).get(key)
    if argo_does:
        return f"{path}: not supported by the local executor (on a cluster, Argo {argo_does})"
    guess = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"{path}: not supported by the local executor: an unknown field, or an Argo feature it does not implement{hint}"


def feature_table() -> str:
    """The README's table of what the local engine runs, accepts and refuses, per kind of object."""
    rows = ["| Where | Runs as Argo does | Accepted, no local effect | Refused at load |", "|---|---|---|---|"]
    for kind, where in _TABLE_ROWS:
        cells = [_codes(_IMPLEMENTED.get(kind, set())), _codes(_NO_LOCAL_EFFECT.get(kind, set())),
                 _codes(set(REFUSED.get(kind, {})))]
        rows.append(f"| {where} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


_TABLE_ROWS = [("spec", "workflow `spec`"), ("cron", "CronWorkflow `spec`"), ("template", "template"),
               ("dag", "`dag`"), ("task", "DAG task"), ("step", "step"), ("container", "`container`"),
               ("script", "`script`"), ("inputs", "`inputs`"), ("outputs", "`outputs`"),
               ("arguments", "`arguments`"), ("parameter", "parameter"), ("retryStrategy", "`retryStrategy`"),
               ("backoff", "`backoff`"), ("synchronization", "`synchronization`"), ("continueOn", "`continueOn`")]


def _codes(names: set[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names)) or "–"


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

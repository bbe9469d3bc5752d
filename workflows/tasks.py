"""Step templates: each step function as a `constructor="runner"` script in the steps image.

Every step template is built here, the same way: image and version from the bundle, the
settings from the ConfigMap, credentials only from Secrets, non-root, a deadline, and retries
for transient failures only (steps exit TRANSIENT_EXIT for those, see steps/outcome.py).
"""

from typing import Callable

from hera.workflows import ConfigMapEnv, Env, Script, SecretEnv
from hera.workflows.models import (
    Mutex,
    PodGC,
    PodSecurityContext,
    SeccompProfile,
    TTLStrategy,
    Backoff,
    Capabilities,
    RetryStrategy,
    SecurityContext,
    Synchronization,
)

from mlferry.steps.notify import ARGO_UI_ENV as ARGO_UI_KEY
from mlferry.steps.notify import URL_ENV as NOTIFY_URL_KEY
from mlferry.steps.outcome import TRANSIENT_EXIT
from mlferry.steps.verify_event import SECRET_ENV as WEBHOOK_SECRET_KEY
from mlferry.workflows.bundle import Bundle

# ConfigMap keys the bundle chart writes (charts/mlferry/templates: the settings ConfigMap).
SETTINGS_KEY = "settings.yaml"
TRACKING_URI_KEY = "MLFLOW_TRACKING_URI"
S3_ENDPOINT_KEY = "MLFLOW_S3_ENDPOINT_URL"
# Optional: who the GitOps commits say wrote them (the chart's gitAuthor; unset, mlferry's own name).
GIT_AUTHOR_KEYS = ("MLFERRY_GIT_AUTHOR_NAME", "MLFERRY_GIT_AUTHOR_EMAIL")
# Optional keys a step reads beyond those every step gets: notify links to the run in the Argo UI
# (the chart's argoUI.url).
STEP_OPTIONAL_KEYS = {"notify": (ARGO_UI_KEY,)}


def wf(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def inp(name: str) -> str:
    return f"{{{{inputs.parameters.{name}}}}}"


def out(task: str, name: str) -> str:
    return f"{{{{tasks.{task}.outputs.parameters.{name}}}}}"


def workflow_settings(bundle: Bundle) -> dict:
    """What every mlferry WorkflowTemplate sets the same way: where and as whom it runs, how
    long it may take, and how long its pods and records are kept."""
    return {
        "namespace": bundle.namespace,
        "labels": bundle.labels,
        "service_account_name": bundle.service_account,
        "active_deadline_seconds": bundle.workflow_deadline_seconds,
        "pod_gc": PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        "ttl_strategy": TTLStrategy(seconds_after_completion=bundle.ttl_seconds),
        # Every pod of the workflow, Argo's own init and wait containers included, fits a namespace
        # that enforces Pod Security "restricted": non-root, the runtime's seccomp profile.
        "security_context": PodSecurityContext(run_as_non_root=True, run_as_user=1000, run_as_group=1000,
                                               seccomp_profile=SeccompProfile(type="RuntimeDefault")),
    }


def gitops_lock(bundle: Bundle) -> Synchronization:
    """Held by every step that writes to the GitOps repo: one writer per repo and branch."""
    return Synchronization(mutexes=[Mutex(name=bundle.gitops_mutex)])


# What each step may read, by the credential it needs: a step gets only the Secrets it uses,
# so a compromised or buggy step cannot reach what it has no business with (verify-event cannot
# push to git, render reaches nothing at all). tests/test_workflows.py holds every template to it.
MLFLOW, S3, GIT, WEBHOOK, NOTIFY = "mlflow", "s3", "git", "webhook", "notify"
STEP_CREDENTIALS: dict[str, frozenset[str]] = {
    "verify-event": frozenset({WEBHOOK}),  # checks the HMAC signature, nothing else
    "resolve": frozenset({MLFLOW}),  # reads the registry
    "publish": frozenset({MLFLOW, S3}),  # reads the version's files, writes the published copy
    "render": frozenset(),  # text in, text out
    "commit": frozenset({GIT, MLFLOW}),  # reads and writes the folder; asks the rule once more
    "report": frozenset({MLFLOW}),  # tags the version
    "retire": frozenset({GIT, MLFLOW}),  # removes a folder, tags the version it held
    "plan": frozenset({MLFLOW, GIT}),  # compares the registry with the folders
    "rollback": frozenset({MLFLOW, GIT}),  # reads the folder's history, moves the alias back
    # waits for the environment (the status source: Argo CD through the workflow's ServiceAccount,
    # or the local applier), reads the input example, asks git whether a revision holds the commit
    "verify": frozenset({MLFLOW, GIT}),
    "give-up": frozenset(),  # ends a failed verification's run with its one line
    "notify": frozenset({NOTIFY}),  # posts one message to the team's notification URL, reads nothing
}


def credential_env(bundle: Bundle, needs: frozenset[str]) -> list:
    """The Secret keys behind each credential a step needs."""
    secrets = bundle.secrets
    keys = {
        S3: [SecretEnv(name=key, secret_name=secrets.s3, secret_key=key)
             for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
        # A token, or the user and password of MLflow's basic-auth app: whichever the Secret holds.
        MLFLOW: [SecretEnv(name=key, secret_name=secrets.mlflow, secret_key=key, optional=True)
                 for key in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")],
        # The GitOps remote's credential: an https token, or an ssh key and the host's known_hosts
        # lines (text, not files: the step writes them 0600 into its scratch folder).
        GIT: [SecretEnv(name=key, secret_name=secrets.git, secret_key=key, optional=True)
              for key in ("MLFERRY_GIT_TOKEN", "MLFERRY_GIT_SSH_PRIVATE_KEY", "MLFERRY_GIT_SSH_KNOWN_HOSTS")],
        # Optional in the template: without it verify-event refuses every event, with that reason.
        WEBHOOK: [SecretEnv(name=WEBHOOK_SECRET_KEY, secret_name=secrets.webhook, secret_key=WEBHOOK_SECRET_KEY,
                            optional=True)],
        # Optional: a team without the Secret (or the key) gets no notifications, and the step says so.
        NOTIFY: [SecretEnv(name=NOTIFY_URL_KEY, secret_name=secrets.notify, secret_key=NOTIFY_URL_KEY, optional=True)],
    }
    return [env for credential in (S3, MLFLOW, GIT, WEBHOOK, NOTIFY) if credential in needs
            for env in keys[credential]]


def step_env(bundle: Bundle, name: str) -> list:
    cm = bundle.config_map
    return [
        ConfigMapEnv(name="MLFERRY_SETTINGS", config_map_name=cm, config_map_key=SETTINGS_KEY),
        ConfigMapEnv(name="MLFLOW_TRACKING_URI", config_map_name=cm, config_map_key=TRACKING_URI_KEY),
        ConfigMapEnv(name="MLFLOW_S3_ENDPOINT_URL", config_map_name=cm, config_map_key=S3_ENDPOINT_KEY),
        *(ConfigMapEnv(name=key, config_map_name=cm, config_map_key=key, optional=True)
          for key in (*GIT_AUTHOR_KEYS, *STEP_OPTIONAL_KEYS.get(name, ()))),
        *credential_env(bundle, STEP_CREDENTIALS[name]),
        Env(name="MLFERRY_LOG_FORMAT", value="json"),
        # MLflow's client retries 5xx on its own for minutes by default; keep its retries short
        # and let the template's retryStrategy (with its backoff) do the patient retrying.
        Env(name="MLFLOW_HTTP_REQUEST_MAX_RETRIES", value="2"),
        Env(name="MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", value="1"),
        Env(name="MLFLOW_HTTP_REQUEST_TIMEOUT", value="60"),
    ]


def retry_strategy(bundle: Bundle) -> RetryStrategy:
    return RetryStrategy(
        limit=str(bundle.retry_limit),
        retry_policy="Always",
        # Only what the step itself calls transient: validation errors fail at once.
        expression=f"asInt(lastRetry.exitCode) == {TRANSIENT_EXIT}",
        # No maxDuration: Argo counts it from the first attempt and makes it every retry's deadline, so a
        # step that fails after two minutes (MLflow's 60 s timeout, three tries) would never be retried.
        # `limit` bounds the tries (waits 5, 10, 20 s …), the workflow's activeDeadlineSeconds the
        # whole; no `cap` either, which Argo Workflows only reads from 3.7.
        backoff=Backoff(duration="5s", factor="2"),
    )


def security_context() -> SecurityContext:
    return SecurityContext(
        run_as_non_root=True,
        run_as_user=1000,
        allow_privilege_escalation=False,
        read_only_root_filesystem=False,  # steps write to /tmp (clones, staged uploads)
        capabilities=Capabilities(drop=["ALL"]),
        seccomp_profile=SeccompProfile(type="RuntimeDefault"),
    )


def step_script(bundle: Bundle, name: str, fn: Callable, **kwargs) -> Script:
    from hera.workflows import Resources

    return Script(
        name=name,
        source=fn,
        constructor="runner",
        image=bundle.image,
        image_pull_policy=bundle.image_pull_policy,
        env=step_env(bundle, name),
        security_context=security_context(),
        # On failure Kubernetes keeps the last log lines as the termination message, which Argo
        # shows as the node message and hands to the exit handler in {{workflow.failures}}.
        termination_message_policy="FallbackToLogsOnError",
        resources=Resources(cpu_request="100m", memory_request="256Mi", memory_limit="1Gi"),
        # Argo types a template deadline as int-or-string; upstream schemas want the string.
        active_deadline_seconds=str(bundle.step_deadline_seconds),
        retry_strategy=retry_strategy(bundle),
        **kwargs,
    )

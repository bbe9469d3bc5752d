"""The bundle config: one typed value from which every Argo object is generated.

It lives in the `bundle:` section of `mlferry.yaml` (the rest of the file is the team's step
settings, `steps.settings.Settings`, which the bundle embeds and hands to each step pod
through its ConfigMap).
"""

import hashlib
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlferry import __version__
from mlferry.steps.settings import Settings, SettingsError, load_settings, settings_file


class SecretNames(BaseModel):
    """Existing Secrets in the team namespace; the bundle only ever references them."""

    model_config = ConfigDict(extra="forbid")
    s3: str = "mlferry-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    mlflow: str = "mlferry-mlflow"  # optional: MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD
    git: str = "mlferry-git"  # MLFERRY_GIT_TOKEN (https), or MLFERRY_GIT_SSH_PRIVATE_KEY and _KNOWN_HOSTS
    webhook: str = "mlferry-webhook"  # MLFERRY_WEBHOOK_SECRET
    notify: str = "mlferry-notify"  # optional: MLFERRY_NOTIFY_URL (a Slack-compatible incoming webhook)


class Events(BaseModel):
    """The webhook EventSource and the promotion Sensor (sensors/objects.py)."""

    model_config = ConfigDict(extra="forbid")
    port: int = Field(default=12000, ge=1, le=65535)
    path: str = Field(default="/mlflow", pattern=r"^/[A-Za-z0-9._~/-]*$")
    # A kubernetes.io/tls Secret (tls.crt, tls.key); empty: plain HTTP inside the cluster.
    tls_secret: str = ""
    # A Secret holding a bearer token the webhook must present; empty: none. MLflow itself cannot
    # send an Authorization header, so only set this behind a proxy that adds it; the HMAC
    # signature, checked by the verify-event step, is what authenticates MLflow.
    auth_secret: str = ""
    auth_secret_key: str = "token"
    event_bus: str = "default"
    service_account: str = "mlferry-sensor"  # may create Workflows in the namespace
    rate_limit_per_minute: int = Field(default=60, ge=1)
    retry_steps: int = Field(default=5, ge=1, le=20)


class Bundle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = "ml"
    image: str = f"ghcr.io/mlferry/mlferry-steps:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "mlferry-workflow"
    config_map: str = "mlferry-config"
    secrets: SecretNames = Field(default_factory=SecretNames)
    mlflow_tracking_uri: str = "http://mlflow.ml.svc:5000"
    s3_endpoint: str = "http://minio.ml.svc:9000"
    schedule: str = "*/15 * * * *"
    timezone: str = "UTC"
    parallelism: int = Field(default=4, ge=1, le=50)
    step_deadline_seconds: int = Field(default=900, ge=30)
    workflow_deadline_seconds: int = Field(default=3600, ge=60)
    retry_limit: int = Field(default=3, ge=0, le=10)
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    events: Events = Field(default_factory=Events)
    settings: Settings = Field(default_factory=Settings)

    @property
    def version(self) -> str:
        return __version__

    @property
    def gitops_mutex(self) -> str:
        """One mutex per GitOps repo and branch: commits to it never race inside Argo."""
        key = f"{self.settings.gitops_repo}#{self.settings.gitops_branch}"
        return f"mlferry-gitops-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    @property
    def labels(self) -> dict[str, str]:
        """The labels every generated object carries."""
        return {
            "app.kubernetes.io/name": "mlferry",
            "app.kubernetes.io/part-of": "mlferry",
            "app.kubernetes.io/version": self.version,
            "app.kubernetes.io/managed-by": "mlferry",
        }

    def settings_yaml(self) -> str:
        """What the ConfigMap hands to each step as MLFERRY_SETTINGS."""
        data = self.settings.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=True)


def load_bundle(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Bundle:
    """The bundle from `mlferry.yaml` (its `bundle:` section plus the step settings).

    The settings come from the file alone unless `environ` is given: local mode passes its shell's,
    so that they are what the steps see. `overrides` (flags) win over both, as in `load_settings`."""
    if environ is not None:  # the same file as the settings: --config, $MLFERRY_CONFIG, ./mlferry.yaml
        path = settings_file(path, environ)
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SettingsError(f"bundle config {path} does not exist") from None
    section = dict(raw.get("bundle") or {})
    if environ is not None:
        settings = load_settings(path, environ=environ, overrides=overrides)
    else:
        settings = load_settings(path, environ={}, overrides=overrides) if path or overrides else Settings()
    try:
        return Bundle.model_validate({**section, "settings": settings})
    except ValidationError as err:
        problems = "; ".join(f"bundle.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SettingsError(f"invalid bundle config: {problems}") from None

"""Settings every step reads: where the registry, the object store and the GitOps repo are.

Per-run values (model, version, environment) travel as workflow parameters; everything that
is fixed for a team's installation comes from here. Sources, strongest first: explicit
overrides (CLI flags), environment variables (``ENV_VARS``), the file (``--config``, else
``$MLFERRY_CONFIG``, else ``./mlferry.yaml``; with none of those, the YAML in
``MLFERRY_SETTINGS``, how the bundle's ConfigMap hands it to a step pod without a volume), then
``MLFLOW_S3_ENDPOINT_URL`` for ``s3_endpoint`` alone, then the defaults below. A step pod and a laptop read the same names.
docs/configuration.md is the reference; `mlferry config` shows where each value came from.
Credentials are never fields here: the AWS/MLflow/git clients read them from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlferry import __version__
from mlferry.steps.model_settings import QUANTITY, QUANTITY_RULE
from mlferry.steps.naming import check_environment_name, check_serving_namespace, is_dns_label

Runtime = Literal["deployment", "kserve"]


def check_endpoint(url: str) -> str:
    """An object store URL serving pods are handed: http(s)://host[:port], or "" for AWS S3."""
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
                or parts.username or parts.query):
        raise ValueError(f"s3_endpoint {url!r} must be http(s)://host[:port] (or empty for AWS S3)")
    return url


Endpoint = Annotated[str, AfterValidator(check_endpoint)]


class SettingsError(ValueError):
    """The configuration is unusable; the message says which value and why."""


class Resources(BaseModel):
    """Requests and limits of every model server; a registered model's mlferry.* tags override them."""

    model_config = ConfigDict(extra="forbid")
    cpu_request: str = "250m"
    memory_request: str = "512Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"

    @field_validator("cpu_request", "memory_request", "cpu_limit", "memory_limit")
    @classmethod
    def _quantity(cls, value: str, info) -> str:
        if not QUANTITY.match(value):
            raise ValueError(f"resources.{info.field_name} {value!r} {QUANTITY_RULE}")
        return value


class EnvironmentSettings(BaseModel):
    """One deployment environment: which aliases (and legacy stages) select its version."""

    model_config = ConfigDict(extra="forbid")
    aliases: list[str]
    stages: list[str] = Field(default_factory=list)
    namespace: str = ""  # empty: "<team>-<environment>"
    replicas: int = Field(default=1, ge=0, le=100)
    # Where this environment's model servers reach the object store, when not the team's
    # `s3_endpoint` (say production runs in another cluster, behind another address).
    s3_endpoint: Endpoint = ""
    # How long the verify step waits for the environment to run and answer a new version.
    verify_timeout: int = Field(default=600, ge=10, le=3600)
    # When it does not: roll the alias back (and redeploy the version before), keep the version
    # before as a hold, or leave it. Unset: rollback for `production`, none elsewhere.
    on_failure: Literal["rollback", "hold", "none"] | None = None


def _default_environments() -> dict[str, EnvironmentSettings]:
    return {
        "staging": EnvironmentSettings(aliases=["staging"], stages=["Staging"]),
        "production": EnvironmentSettings(aliases=["production", "champion"], stages=["Production"]),
    }


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: str = "ml"
    bucket: str = "mlferry"
    gitops_repo: str = ""
    gitops_branch: str = "main"
    # An empty GitOps remote gets the branch only when asked: a wrong URL must not start a history.
    gitops_create_branch: bool = False
    runtime: Runtime = "deployment"
    # images/serving: mlflow + boto3, which MLflow's own image lacks for s3:// models
    serving_image: str = f"ghcr.io/mlferry/mlferry-serving:{__version__}"
    # Secrets (in each serving namespace) the model servers pull it with: their imagePullSecrets.
    serving_image_pull_secrets: list[str] = Field(default_factory=list)
    s3_endpoint: Endpoint = ""  # what serving pods use to reach the object store
    s3_secret: str = "mlferry-s3"  # Secret (in each serving namespace) with AWS_* keys
    prune: bool = True
    # Model sources read besides the tracking server's artifact proxy (e.g. "s3://mlflow-artifacts/"):
    # anything else a version names is refused, since mlferry's credentials would go there.
    allowed_sources: list[str] = Field(default_factory=list)
    # The most of the team's folders one reconcile may remove; more is refused unless forced
    # (`--prune force`), and removing every folder always is: a registry that suddenly answers
    # "no models" (a failover to an empty database, a token that lost READ) must not undeploy all.
    prune_max_share: float = Field(default=0.5, gt=0, le=1)
    resources: Resources = Field(default_factory=Resources)
    # Where the verify step learns what an environment runs: "argocd" (the Application the
    # ApplicationSet made for the folder), "local" (the local applier), or "off": a promotion
    # ends at its commit, unverified, and its tags say so.
    verify: Literal["off", "argocd", "local"] = "off"
    argocd_namespace: str = "argocd"  # where the team's Applications live (verify: argocd)
    environments: dict[str, EnvironmentSettings] = Field(default_factory=_default_environments)

    @field_validator("team")
    @classmethod
    def _team_is_label(cls, team: str) -> str:
        if not is_dns_label(team, 40):
            raise ValueError(f"team {team!r} must be a DNS-1123 label (lowercase letters, digits, '-')")
        return team

    @field_validator("allowed_sources", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """MLFERRY_ALLOWED_SOURCES holds them comma-separated."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("environments")
    @classmethod
    def _environment_names(cls, envs: dict[str, EnvironmentSettings]) -> dict[str, EnvironmentSettings]:
        for name in envs:
            check_environment_name(name)
        return envs

    @model_validator(mode="after")
    def _aliases_unique(self) -> "Settings":
        seen: dict[str, str] = {}
        for env, cfg in self.environments.items():
            for alias in cfg.aliases:
                if alias in seen:
                    raise ValueError(f"alias {alias!r} is mapped to both {seen[alias]!r} and {env!r}")
                seen[alias] = env
        return self

    @model_validator(mode="after")
    def _namespaces_leave_room_for_names(self) -> "Settings":
        for env in self.environments:
            check_serving_namespace(self.namespace(env), self.runtime)
        return self

    def require_gitops_repo(self) -> str:
        """The GitOps remote, for the commands that cannot work without one: one check, one message."""
        if not self.gitops_repo:
            raise SettingsError("no GitOps repo configured: set MLFERRY_GITOPS_REPO or gitops_repo in mlferry.yaml")
        return self.gitops_repo

    def environment(self, env: str) -> EnvironmentSettings:
        try:
            return self.environments[env]
        except KeyError:
            known = ", ".join(sorted(self.environments)) or "none"
            raise SettingsError(f"unknown environment {env!r}; configured environments: {known}") from None

    def namespace(self, env: str) -> str:
        return self.environment(env).namespace or f"{self.team}-{env}"

    def on_failure(self, env: str) -> str:
        """What a failed verification does in `env`: rollback | hold | none."""
        chosen = self.environment(env).on_failure
        return chosen or ("rollback" if env == "production" else "none")

    def serving_endpoint(self, env: str) -> str:
        """The object store's URL as the environment's model servers reach it ("": AWS S3)."""
        return self.environment(env).s3_endpoint or self.s3_endpoint

    def environment_for_alias(self, alias: str) -> str | None:
        for env, cfg in self.environments.items():
            if alias in cfg.aliases:
                return env
        return None

    def environment_for_stage(self, stage: str) -> str | None:
        for env, cfg in self.environments.items():
            if stage.lower() in (s.lower() for s in cfg.stages):
                return env
        return None


# MLFERRY_* variables and the settings field each one sets.
ENV_VARS = {
    "MLFERRY_TEAM": "team",
    "MLFERRY_BUCKET": "bucket",
    "MLFERRY_GITOPS_REPO": "gitops_repo",
    "MLFERRY_GITOPS_BRANCH": "gitops_branch",
    "MLFERRY_GITOPS_CREATE_BRANCH": "gitops_create_branch",
    "MLFERRY_RUNTIME": "runtime",
    "MLFERRY_SERVING_IMAGE": "serving_image",
    "MLFERRY_S3_SECRET": "s3_secret",
    "MLFERRY_S3_ENDPOINT": "s3_endpoint",
    "MLFERRY_VERIFY": "verify",
    "MLFERRY_PRUNE": "prune",
    "MLFERRY_PRUNE_MAX_SHARE": "prune_max_share",
    "MLFERRY_ALLOWED_SOURCES": "allowed_sources",
}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings, each value from the strongest source that sets it:
    flag (`overrides`) > environment variable > file > default."""
    return load_settings_with_origins(path, environ, overrides)[0]


# Where a value came from: ("flag", "--team"), ("variable", "MLFERRY_TEAM"),
# ("file", "/abs/mlferry.yaml"), ("variable", "MLFERRY_SETTINGS") or ("default", "").
Origin = tuple[str, str]


def settings_file(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The file the settings come from: `path` (--config), else $MLFERRY_CONFIG, else ./mlferry.yaml if
    it exists; None when there is none (then MLFERRY_SETTINGS, if set, stands in for it)."""
    named = path or environ.get("MLFERRY_CONFIG")
    if named:
        return Path(named)
    return Path("mlferry.yaml") if Path("mlferry.yaml").exists() else None


def load_settings_with_origins(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Settings, dict[str, Origin]]:
    """`load_settings`, and for each top-level key the source its value came from."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}

    def take(found: Mapping[str, Any], origin: Origin) -> None:
        values.update(found)
        origins.update({key: origin for key in found})

    file = settings_file(path, environ)
    if file is not None:
        take(_read_file(file), ("file", str(file.resolve())))
    elif environ.get("MLFERRY_SETTINGS"):
        take(_parse(environ["MLFERRY_SETTINGS"], "MLFERRY_SETTINGS"), ("variable", "MLFERRY_SETTINGS"))
    if environ.get("MLFLOW_S3_ENDPOINT_URL") and not values.get("s3_endpoint"):
        # Only a fallback: it is where this process reaches the store (a step pod's ConfigMap sets
        # the promoter's endpoint), not necessarily where serving pods do, which the file says.
        take({"s3_endpoint": environ["MLFLOW_S3_ENDPOINT_URL"]}, ("variable", "MLFLOW_S3_ENDPOINT_URL"))
    for var, field in ENV_VARS.items():
        if environ.get(var):  # an empty variable is unset, as in the shell's ${VAR:-default}
            take({field: environ[var]}, ("variable", var))
    for field, value in (overrides or {}).items():
        if value is not None:
            take({field: value}, ("flag", "--" + field.replace("_", "-")))
    try:
        settings = Settings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        raise SettingsError(f"invalid mlferry settings: {problems}") from None
    for field in Settings.model_fields:
        origins.setdefault(field, ("default", ""))
    return settings, {field: origins[field] for field in Settings.model_fields}


def _read_file(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise SettingsError(f"settings file {file} does not exist") from None
    return _parse(text, f"settings file {file}")


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{source} must hold a mapping, not {type(data).__name__}")
    data.pop("bundle", None)  # the Argo bundle's own section (workflows.bundle) shares the file
    return data

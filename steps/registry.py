"""The MLflow registry, seen from mlferry: find a version, read its MLmodel, write tags back.

Every failure becomes a RegistryError whose message names the model and what is missing,
because the person reading it is a data scientist who just moved an alias.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
from mlflow.exceptions import MlflowException

# Run tag MLflow sets from the training code's git checkout.
GIT_COMMIT_TAG = "mlflow.source.git.commit"


class RegistryError(LookupError):
    """The registry has no such model, version, alias or stage, or the version is not usable."""


def client() -> MlflowClient:
    # MLFLOW_TRACKING_URI and credentials come from the environment, as on Argo.
    return MlflowClient()


def _missing(err: MlflowException) -> bool:
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def find_version(mlflow: MlflowClient, name: str, *, version: str = "", alias: str = "",
                 stage: str = "") -> MlflowModelVersion:
    """The version selected by exactly one of version, alias or legacy stage."""
    chosen = [(k, v) for k, v in (("version", version), ("alias", alias), ("stage", stage)) if v]
    if len(chosen) != 1:
        raise ValueError(f"choose exactly one of version, alias or stage for model {name!r} "
                         f"(got {', '.join(k for k, _ in chosen) or 'none'})")
    _registered(mlflow, name)
    kind, value = chosen[0]
    if kind == "version":
        found = _by_version(mlflow, name, value)
    elif kind == "alias":
        found = _by_alias(mlflow, name, value)
    else:
        found = _by_stage(mlflow, name, value)
    return check_ready(found)


def check_ready(found: MlflowModelVersion) -> MlflowModelVersion:
    if found.status != "READY":
        raise RegistryError(f"model {found.name!r} version {found.version} is {found.status}, not READY; "
                            "wait for its registration to finish")
    return found


def _registered(mlflow: MlflowClient, name: str) -> None:
    try:
        mlflow.get_registered_model(name)
    except MlflowException as err:
        if _missing(err):
            raise RegistryError(f"model {name!r} is not registered in {mlflow.tracking_uri}") from None
        raise


def _by_version(mlflow: MlflowClient, name: str, version: str) -> MlflowModelVersion:
    try:
        return mlflow.get_model_version(name, version)
    except MlflowException as err:
        if _missing(err):
            raise RegistryError(f"model {name!r} has no version {version!r}") from None
        raise


def _by_alias(mlflow: MlflowClient, name: str, alias: str) -> MlflowModelVersion:
    try:
        return mlflow.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if _missing(err):
            known = sorted(mlflow.get_registered_model(name).aliases or {})
            raise RegistryError(f"model {name!r} has no alias {alias!r} "
                                f"(its aliases: {', '.join(known) or 'none'})") from None
        raise


def _by_stage(mlflow: MlflowClient, name: str, stage: str) -> MlflowModelVersion:
    # Legacy stages: the newest version in that stage wins, as MLflow's own `models:/name/Stage`.
    versions = [v for v in mlflow.search_model_versions(f"name = '{_quote(name)}'")
                if v.current_stage.lower() == stage.lower()]
    if not versions:
        raise RegistryError(f"model {name!r} has no version in stage {stage!r}")
    return max(versions, key=lambda v: int(v.version))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def download_uri(mlflow: MlflowClient, name: str, version: str) -> str:
    return mlflow.get_model_version_download_uri(name, version)


def read_mlmodel(source_uri: str) -> dict[str, Any]:
    """The version's MLmodel file: flavors and signature."""
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(artifact_uri=f"{source_uri.rstrip('/')}/MLmodel", dst_path=tmp)
        except MlflowException as err:
            raise RegistryError(f"cannot read the MLmodel file at {source_uri}: {err.message}") from None
        data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or "flavors" not in data:
        raise RegistryError(f"{source_uri}/MLmodel has no flavors; is this an MLflow model?")
    return data


def run_facts(mlflow: MlflowClient, run_id: str) -> tuple[dict[str, float], str]:
    """(metrics, training code's git commit) of the run that produced the version."""
    if not run_id:
        return {}, ""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException as err:
        if _missing(err):
            return {}, ""  # the run was deleted; the version still stands on its own
        raise
    return dict(run.data.metrics), run.data.tags.get(GIT_COMMIT_TAG, "")


def set_version_tags(mlflow: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        mlflow.set_model_version_tag(name, version, key, value)


@dataclass(frozen=True)
class RegisteredModelView:
    """What reconcile needs of a registered model: its aliases and its latest version per stage."""

    name: str
    aliases: dict[str, str]  # alias → version
    stages: dict[str, str]  # legacy stage → latest version in it


def list_models(mlflow: MlflowClient, page_size: int = 1000) -> list[RegisteredModelView]:
    """Every registered model, a page of up to `page_size` per request."""
    views, token = [], None
    while True:
        page = mlflow.search_registered_models(max_results=page_size, page_token=token)
        views.extend(_view(model) for model in page)
        token = page.token
        if not token:
            return views


def _view(model) -> RegisteredModelView:
    aliases = model.aliases if isinstance(model.aliases, dict) else {}
    stages = {v.current_stage: str(v.version) for v in (model.latest_versions or [])
              if v.current_stage and v.current_stage != "None"}
    return RegisteredModelView(model.name, {a: str(v) for a, v in aliases.items()}, stages)

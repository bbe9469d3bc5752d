"""The MLflow registry, seen from mlferry: find a version, read its MLmodel, write tags back.

Every failure becomes a RegistryError whose message names the model and what is missing,
because the person reading it is a data scientist who just moved an alias.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from mlferry.steps.mlflow_api import MlflowApi, MlflowApiError

# Run tag MLflow sets from the training code's git checkout.
GIT_COMMIT_TAG = "mlflow.source.git.commit"


class RegistryError(LookupError):
    """The registry has no such model, version, alias or stage, or the version is not usable."""


class ModelMissing(RegistryError):
    """The registry answered, successfully, that no registered model has this name."""


@dataclass(frozen=True)
class Version:
    """A model version, as the registry's REST API describes it."""

    name: str
    version: str
    status: str = "READY"
    run_id: str = ""
    description: str = ""
    current_stage: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Version:
        return cls(name=data["name"], version=str(data["version"]), status=data.get("status", "READY"),
                   run_id=data.get("run_id") or "", description=data.get("description") or "",
                   current_stage=data.get("current_stage") or "", tags=_pairs(data.get("tags")))


def client() -> MlflowApi:
    # MLFLOW_TRACKING_URI and credentials come from the environment, as on Argo.
    return MlflowApi.from_env()


def _missing(err: MlflowApiError) -> bool:
    return err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def find_version(mlflow: MlflowApi, name: str, *, version: str = "", alias: str = "",
                 stage: str = "") -> Version:
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


def ready_version(mlflow: MlflowApi, name: str, version: str) -> Version:
    """Version `version` of a model already known to exist (its view was read): one request."""
    return check_ready(_by_version(mlflow, name, version))


def check_ready(found: Version) -> Version:
    if found.status != "READY":
        raise RegistryError(f"model {found.name!r} version {found.version} is {found.status}, not READY; "
                            "wait for its registration to finish")
    return found


def _get(mlflow: MlflowApi, endpoint: str, key: str, missing: Callable[[], str], *,
         error: type[RegistryError] = RegistryError, **params: str) -> dict:
    """One registry object; a missing one is an `error` saying `missing()`."""
    try:
        return mlflow.get(endpoint, **params)[key]
    except MlflowApiError as err:
        if _missing(err):
            raise error(missing()) from None
        raise


def _registered(mlflow: MlflowApi, name: str) -> dict:
    return _get(mlflow, "registered-models/get", "registered_model",
                lambda: f"registered model {name!r} not found in {mlflow.tracking_uri}{_did_you_mean(mlflow, name)}",
                error=ModelMissing, name=name)


def model_view(mlflow: MlflowApi, name: str) -> RegisteredModelView:
    """One model's aliases and latest version per stage, from one answer about that very model:
    the evidence the rule needs before a folder may go (ModelMissing: the registry says it has none)."""
    return _view(_registered(mlflow, name))


def _did_you_mean(mlflow: MlflowApi, name: str) -> str:
    """"; did you mean 'x'?" with up to 3 registered names close to a mistyped one (case
    ignored), or "" when none is close or the names cannot be listed: the error stands without."""
    try:
        names = [m.name for m in list_models(mlflow)]
    except MlflowApiError:
        return ""
    return did_you_mean(name, names)


def did_you_mean(name: str, names: list[str], most: int = 3) -> str:
    by_lower: dict[str, list[str]] = {}
    for known in names:
        by_lower.setdefault(known.lower(), []).append(known)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=most, cutoff=0.6)
    found = [known for lower in close for known in sorted(by_lower[lower])][:most]
    if not found:
        return ""
    quoted = [repr(known) for known in found]
    return "; did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def _by_version(mlflow: MlflowApi, name: str, version: str) -> Version:
    return Version.from_json(_get(mlflow, "model-versions/get", "model_version",
                                  lambda: f"model {name!r} has no version {version!r}", name=name, version=version))


def _by_alias(mlflow: MlflowApi, name: str, alias: str) -> Version:
    def missing() -> str:
        known = sorted(_aliases(_registered(mlflow, name)))
        return f"model {name!r} has no alias {alias!r} (its aliases: {', '.join(known) or 'none'})"

    return Version.from_json(_get(mlflow, "registered-models/alias", "model_version", missing,
                                  name=name, alias=alias))


def _by_stage(mlflow: MlflowApi, name: str, stage: str) -> Version:
    # Legacy stages: the newest version in that stage wins, as MLflow's own `models:/name/Stage`.
    versions = [v for v in _search_versions(mlflow, f"name = '{_quote(name)}'")
                if v.current_stage.lower() == stage.lower()]
    if not versions:
        raise RegistryError(f"model {name!r} has no version in stage {stage!r}")
    return max(versions, key=lambda v: int(v.version))


def _search_versions(mlflow: MlflowApi, query: str) -> list[Version]:
    found, token = [], ""
    while True:
        page = mlflow.get("model-versions/search", filter=query, max_results=1000,
                          **({"page_token": token} if token else {}))
        found += [Version.from_json(v) for v in page.get("model_versions", [])]
        token = page.get("next_page_token", "")
        if not token:
            return found


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def download_uri(mlflow: MlflowApi, name: str, version: str) -> str:
    return mlflow.get("model-versions/get-download-uri", name=name, version=version)["artifact_uri"]


def read_mlmodel(source_uri: str) -> dict[str, Any]:
    """The version's MLmodel file: flavors and signature."""
    from mlferry.steps.artifacts import SourceError, open_source

    source = open_source(source_uri)
    try:
        with source.fetch("MLmodel") as path:
            data = yaml.safe_load(path.read_text()) or {}
    except SourceError as err:
        raise RegistryError(_why_no_mlmodel(source, source_uri) or f"cannot read the MLmodel file at "
                            f"{source_uri}: {err}") from None
    if not isinstance(data, dict) or "flavors" not in data:
        raise RegistryError(f"{source_uri}/MLmodel has no flavors; is this an MLflow model?")
    return data


def _why_no_mlmodel(source: Any, source_uri: str) -> str:
    """When MLmodel cannot be read, the listing may say why: nothing is there (the artifact proxy
    answers 500 for a missing file), or no MLmodel among the files. "" when the listing fails too."""
    from mlferry.steps.artifacts import SourceError

    try:
        files = [f.path for f in source.files()]
    except SourceError:
        return ""
    if not files:
        return (f"the version has no artifacts: nothing was logged at {source_uri}; log the model "
                "(mlflow.<flavor>.log_model) and register the version it creates")
    if "MLmodel" not in files:
        return (f"the version's artifacts at {source_uri} have no MLmodel file (it holds {', '.join(files[:5])}"
                f"{', …' if len(files) > 5 else ''}); register the folder a log_model call wrote")
    return ""


def run_facts(mlflow: MlflowApi, run_id: str) -> tuple[dict[str, float], str]:
    """(metrics, training code's git commit) of the run that produced the version."""
    if not run_id:
        return {}, ""
    try:
        data = mlflow.get("runs/get", run_id=run_id)["run"].get("data", {})
    except MlflowApiError as err:
        if _missing(err):
            return {}, ""  # the run was deleted; the version still stands on its own
        raise
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
    return metrics, _pairs(data.get("tags")).get(GIT_COMMIT_TAG, "")


def set_version_tags(mlflow: MlflowApi, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        mlflow.post("model-versions/set-tag", {"name": name, "version": version, "key": key, "value": value})


def delete_version_tags(mlflow: MlflowApi, name: str, version: str, keys: list[str]) -> None:
    """Remove tags that would no longer be true; one that is not there is fine."""
    for key in keys:
        try:
            mlflow.delete("model-versions/delete-tag", {"name": name, "version": version, "key": key})
        except MlflowApiError as err:
            if not _missing(err):
                raise


def _pairs(entries: Any) -> dict[str, str]:
    """MLflow's JSON lists of {key, value} (tags, params) as a dict."""
    return {e["key"]: e.get("value", "") for e in entries or [] if isinstance(e, dict) and "key" in e}


def _aliases(model: Mapping[str, Any]) -> dict[str, str]:
    return {a["alias"]: str(a["version"]) for a in model.get("aliases") or [] if "alias" in a}


@dataclass(frozen=True)
class RegisteredModelView:
    """What reconcile needs of a registered model: its aliases and its latest version per stage."""

    name: str
    aliases: dict[str, str]  # alias → version
    stages: dict[str, str]  # legacy stage → latest version in it
    tags: dict[str, str] = field(default_factory=dict)  # the model's own tags (per-model settings)


def list_models(mlflow: MlflowApi, page_size: int = 1000) -> list[RegisteredModelView]:
    """Every registered model, a page of up to `page_size` per request."""
    views, token = [], ""
    while True:
        page = mlflow.get("registered-models/search", max_results=page_size,
                          **({"page_token": token} if token else {}))
        views.extend(_view(model) for model in page.get("registered_models", []))
        token = page.get("next_page_token", "")
        if not token:
            return views


def _view(model: Mapping[str, Any]) -> RegisteredModelView:
    stages = {v["current_stage"]: str(v["version"]) for v in model.get("latest_versions") or []
              if v.get("current_stage") and v["current_stage"] != "None"}
    return RegisteredModelView(model["name"], _aliases(model), stages, _pairs(model.get("tags")))

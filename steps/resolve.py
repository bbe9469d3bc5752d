"""resolve: which model version is to be promoted, and what the later steps need to know of it."""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.


import json
from typing import Any

from hera.workflows import Input, Output

from mlferry.steps import registry
from mlferry.steps.model_settings import TAG_PREFIX, ModelServing, check_requests_within_limits, serving_from_tags
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.naming import slugify
from mlferry.steps.settings import Settings, load_settings


class ResolveInput(Input):
    model: str
    version: str = ""
    alias: str = ""
    stage: str = ""
    env: str


class ModelVersion(Output):
    name: str
    version: str
    slug: str
    env: str
    source_uri: str
    run_id: str = ""
    source_commit: str = ""
    description: str = ""
    flavors: list[str] = []
    signature: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    serving: ModelServing = ModelServing()  # from the registered model's mlferry.* tags


@as_argo_step
def resolve(inputs: ResolveInput) -> ModelVersion:
    return resolve_version(inputs, load_settings(), registry.client())


def resolve_version(inputs: ResolveInput, settings: Settings, mlflow) -> ModelVersion:
    settings.environment(inputs.env)  # an unknown environment fails before any registry call
    found = registry.find_version(mlflow, inputs.model, version=inputs.version,
                                  alias=inputs.alias, stage=inputs.stage)
    serving = _model_serving(registry.model_tags(mlflow, found.name), settings)  # a bad tag fails here, first
    source_uri = registry.download_uri(mlflow, found.name, found.version)
    mlmodel = registry.read_mlmodel(source_uri)
    metrics, commit = registry.run_facts(mlflow, found.run_id or "")
    return ModelVersion(
        name=found.name,
        version=str(found.version),
        slug=slugify(found.name),
        env=inputs.env,
        source_uri=source_uri,
        run_id=found.run_id or "",
        source_commit=commit or (found.tags or {}).get(registry.GIT_COMMIT_TAG, ""),
        description=found.description or "",
        flavors=sorted(mlmodel.get("flavors") or {}),
        signature=_signature(mlmodel.get("signature")),
        metrics=metrics,
        serving=serving,
    )


def _model_serving(tags: dict[str, str], settings: Settings) -> ModelServing:
    """The registered model's serving tags, checked alone and against the team's resources."""
    serving = serving_from_tags(tags)
    resources = serving.resources_over(settings.resources.model_dump())
    sources = {key: f"registered-model tag {TAG_PREFIX}{key}" if key in serving.resources() else f"resources.{key}"
               for key in resources}
    check_requests_within_limits(resources, sources)
    return serving


def _signature(raw: Any) -> dict[str, Any]:
    """MLmodel stores each part of the signature as a JSON string; return them parsed."""
    if not isinstance(raw, dict):
        return {}
    parsed = {}
    for part, value in raw.items():
        try:
            parsed[part] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            parsed[part] = value
    return parsed

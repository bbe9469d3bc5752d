"""resolve: which model version is to be promoted, and what the later steps need to know of it."""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.


import json
import logging
from dataclasses import dataclass
from typing import Any

from hera.workflows import Input, Output

from mlferry.steps import registry, rule
from mlferry.steps.artifacts import check_source_allowed
from mlferry.steps.model_settings import TAG_PREFIX, ModelServing, check_requests_within_limits, serving_from_tags
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.naming import slugify
from mlferry.steps.settings import Settings, load_settings
from mlferry.steps.trailers import argo_safe_json, one_line

log = logging.getLogger(__name__)


class ResolveInput(Input):
    model: str = ""
    version: str = ""  # a deliberate choice: a hold when the rule selects another version
    alias: str = ""  # must be one of the environment's aliases (or `force`); the rule then picks
    stage: str = ""
    env: str = ""
    # A reconcile fan-out item, {model, env, …}, passed whole: Argo escapes string values inside object
    # items once more when they are substituted one by one (argo-workflows issue 16061), not `{{item}}`.
    item: dict[str, str] = {}
    event: str = ""  # created | deleted: a verified webhook started the run; its alias is only a hint
    hold: str = ""  # a reason: deploy the version and hold it there until released
    release: bool = False  # end the environment's hold: deploy what the rule selects (or retire)
    force: bool = False  # deploy an alias of another environment here (as a hold)
    trigger: str = "manual"


class ModelVersion(Output):
    action: str = "promote"  # promote | retire (nothing selects a version: the registry says so)
    why: str = ""  # one line: what selected the version, or why the folder goes
    name: str
    version: str = ""
    slug: str = ""
    env: str
    hold: str = ""  # the hold this promotion records; "" follows the rule
    release: bool = False
    source_uri: str = ""
    run_id: str = ""
    source_commit: str = ""
    description: str = ""
    # description and source_commit again, as JSON no Argo substitution can touch (render reads it)
    registry_text: str = ""
    flavors: list[str] = []
    signature: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    serving: ModelServing = ModelServing()  # from the registered model's mlferry.* tags


class PromotionRefused(ValueError):
    """The request contradicts the rule in a way mlferry will not guess about; nothing was done."""


@dataclass(frozen=True)
class Decision:
    action: str  # promote | retire
    version: str = ""
    hold: str = ""
    why: str = ""


@as_argo_step
def resolve(inputs: ResolveInput) -> ModelVersion:
    return resolve_version(inputs, load_settings(), registry.client())


def resolve_version(inputs: ResolveInput, settings: Settings, mlflow) -> ModelVersion:
    inputs = from_item(inputs)
    settings.environment(inputs.env)  # an unknown environment fails before any registry call
    check_one_selector(inputs)
    view = registry.model_view(mlflow, inputs.model)
    decision = decide(inputs, view, settings)
    log.info("%s in %s: %s", inputs.model, inputs.env, decision.why)
    if decision.action == "retire":
        return ModelVersion(action="retire", why=decision.why, name=inputs.model, env=inputs.env,
                            release=inputs.release)
    found = registry.ready_version(mlflow, inputs.model, decision.version)
    serving = _model_serving(view.tags, settings)  # a bad tag fails here, first
    source_uri = registry.download_uri(mlflow, found.name, found.version)
    check_source_allowed(source_uri, mlflow.tracking_uri, settings.allowed_sources)  # before any credential goes
    mlmodel = registry.read_mlmodel(source_uri)
    metrics, commit = registry.run_facts(mlflow, found.run_id or "")
    source_commit = commit or (found.tags or {}).get(registry.GIT_COMMIT_TAG, "")
    return ModelVersion(
        why=decision.why,
        name=found.name,
        version=str(found.version),
        slug=slugify(found.name),
        env=inputs.env,
        hold=decision.hold,
        release=inputs.release,
        source_uri=source_uri,
        run_id=found.run_id or "",
        source_commit=source_commit,
        description=found.description or "",
        registry_text=argo_safe_json({"description": found.description or "", "source_commit": source_commit}),
        flavors=sorted(mlmodel.get("flavors") or {}),
        signature=_signature(mlmodel.get("signature")),
        metrics=metrics,
        serving=serving,
    )


def decide(inputs: ResolveInput, view: registry.RegisteredModelView, settings: Settings) -> Decision:
    """What this run does, by the rule (steps/rule.py), given what it was asked (no I/O)."""
    check_one_selector(inputs)
    chosen = rule.select(view, inputs.env, settings)
    if inputs.version:
        return _deliberate(inputs, chosen)
    if inputs.alias and not inputs.event:
        forced = _alias_request(inputs, view, settings, chosen)
        if forced:
            return forced
    if inputs.stage and not inputs.event:
        _stage_request(inputs, view, settings)
    if not chosen.selected:
        if inputs.hold:
            raise PromotionRefused(f"nothing selects a version of {inputs.model!r} for {inputs.env}: "
                                   "name the version to hold (--version)")
        return Decision("retire", why=f"no alias or stage of {inputs.env} selects a version (the registry's "
                                      "answer about this model says so)")
    return Decision("promote", chosen.version, hold=inputs.hold, why=f"the rule selects {chosen.words()}")


def from_item(inputs: ResolveInput) -> ResolveInput:
    """The model and environment, from the fan-out item when there is one."""
    if inputs.item:
        inputs = inputs.model_copy(update={"model": str(inputs.item.get("model", "")),
                                           "env": str(inputs.item.get("env", ""))})
    if not inputs.model or not inputs.env:
        raise ValueError("resolve needs a model and an environment (or a fan-out item naming both)")
    return inputs


def check_one_selector(inputs: ResolveInput) -> None:
    asked = [k for k in ("version", "alias", "stage") if getattr(inputs, k)]
    if len(asked) > 1:
        raise ValueError(f"choose at most one of version, alias or stage for model {inputs.model!r} "
                         f"(got {', '.join(asked)})")


def _deliberate(inputs: ResolveInput, chosen: rule.Selection) -> Decision:
    """An explicit version: the rule's own is a plain promotion, any other a hold."""
    version = inputs.version
    if version == chosen.version and not inputs.hold:
        return Decision("promote", version, why=f"v{version}, which the rule selects too: {chosen.words()}")
    reason = one_line(inputs.hold or f"{inputs.trigger} deploy of v{version}; the rule selects {chosen.words()}")
    return Decision("promote", version, hold=reason, why=f"v{version} as asked, held: {reason}")


def _alias_request(inputs: ResolveInput, view: registry.RegisteredModelView, settings: Settings,
                   chosen: rule.Selection) -> Decision | None:
    """`--alias A --env E`: A must select E's version, or the run must be forced (a hold)."""
    alias, env = inputs.alias, inputs.env
    if alias not in view.aliases:
        raise registry.RegistryError(f"model {inputs.model!r} has no alias {alias!r} "
                                     f"(its aliases: {', '.join(sorted(view.aliases)) or 'none'})")
    owner = settings.environment_for_alias(alias)
    if owner == env:
        return None  # the rule decides among the environment's aliases
    version = view.aliases[alias]
    if not inputs.force:
        belongs = f"environment {owner!r}" if owner else "no environment"
        raise PromotionRefused(
            f"alias {alias!r} (v{version}) belongs to {belongs}, not to {env!r}, whose version the rule "
            f"takes from {chosen.words()}; give --force to deploy v{version} to {env} and hold it there, "
            f"or move one of {env}'s aliases ({', '.join(settings.environment(env).aliases) or 'none'})")
    reason = one_line(inputs.hold or f"forced: @{alias} (v{version}) deployed to {env}")
    return Decision("promote", version, hold=reason, why=f"v{version} from @{alias}, held: {reason}")


def _stage_request(inputs: ResolveInput, view: registry.RegisteredModelView, settings: Settings) -> None:
    stages = {s.lower() for s in settings.environment(inputs.env).stages}
    if inputs.stage.lower() not in stages:
        raise PromotionRefused(f"stage {inputs.stage!r} does not select {inputs.env}'s version (its stages: "
                               f"{', '.join(settings.environment(inputs.env).stages) or 'none'}); name a "
                               "version with --version to deploy it there as a hold")
    if inputs.stage.lower() not in {s.lower() for s in view.stages}:
        raise registry.RegistryError(f"model {inputs.model!r} has no version in stage {inputs.stage!r}")


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

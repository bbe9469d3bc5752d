"""plan: what the registry wants deployed, against what the GitOps repo holds.

The reconcile schedule catches what webhooks cannot: deliveries MLflow dropped, changes made
while the receiver was down, and legacy stage transitions (which fire no webhook at all).

Its cost grows with what changed, not with the registry's size: one paged registry listing
(aliases and latest-per-stage come with each registered model) and one shallow read of the
GitOps repo. The object store is not visited for unchanged entries: a folder only ever points
at a version after `publish` completed its manifest (the DAG orders commit after publish), and
each promotion it does start re-checks the copy anyway.
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

from dataclasses import dataclass
from typing import Iterable

import yaml
from hera.workflows import Input, Output

from mlferry.steps import gitops, registry
from mlferry.steps.layout import parse_gitops_folder, team_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import Settings, load_settings

# libyaml's safe loader when present: ~10x faster, and reconcile parses every folder.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MODEL_ANNOTATION = "mlferry.io/model-name"
VERSION_ANNOTATION = "mlferry.io/version"


class PlanInput(Input):
    prune: str = "auto"  # "auto": the settings decide; "true" / "false" override


class Plan(Output):
    promotions: list[dict[str, str]] = []  # [{model, version, env}]
    removals: list[dict[str, str]] = []  # [{model, version, env, folder}]
    promotion_count: int = 0
    removal_count: int = 0
    unchanged: int = 0
    held: int = 0  # folders whose alias is gone, kept because pruning is off
    head: str = ""


@dataclass(frozen=True)
class Deployed:
    model: str
    version: str
    folder: str


@as_argo_step
def plan(inputs: PlanInput) -> Plan:
    settings = load_settings()
    repo = settings.require_gitops_repo()
    models = registry.list_models(registry.client())
    snapshot = gitops.read_snapshot(repo, settings.gitops_branch, team_prefix(settings.team))
    prune = settings.prune if inputs.prune == "auto" else inputs.prune == "true"
    return plan_changes(desired_state(models, settings), deployed_state(snapshot), prune, snapshot.sha)


def desired_state(models: Iterable[registry.RegisteredModelView], settings: Settings) -> dict[tuple[str, str], str]:
    """(model, env) → version. An alias wins over a legacy stage for the same environment."""
    desired: dict[tuple[str, str], str] = {}
    for model in models:
        for stage, version in model.stages.items():
            env = settings.environment_for_stage(stage)
            if env:
                desired[(model.name, env)] = version
        for alias, version in sorted(model.aliases.items()):
            env = settings.environment_for_alias(alias)
            if env:
                desired[(model.name, env)] = version
    return desired


def deployed_state(snapshot: gitops.Snapshot) -> dict[tuple[str, str], Deployed]:
    """(model, env) → what the folder serves, read from the annotations render wrote."""
    deployed = {}
    for folder, files in snapshot.folders(depth=4).items():
        try:
            _, slug, env = parse_gitops_folder(folder)
        except ValueError:
            continue  # not a folder mlferry owns
        found = _annotations(files.values())
        model = found.get(MODEL_ANNOTATION, "")
        if model and slugify(model) == slug:
            deployed[(model, env)] = Deployed(model, found.get(VERSION_ANNOTATION, ""), folder)
    return deployed


def _annotations(texts: Iterable[str]) -> dict[str, str]:
    for text in texts:
        try:
            docs = list(yaml.load_all(text, Loader=_LOADER))
        except yaml.YAMLError:
            continue
        for doc in docs:
            notes = ((doc or {}).get("metadata") or {}).get("annotations") or {}
            if MODEL_ANNOTATION in notes:
                return notes
    return {}


def plan_changes(desired: dict[tuple[str, str], str], deployed: dict[tuple[str, str], Deployed],
                 prune: bool, head: str = "") -> Plan:
    promotions = [{"model": model, "version": version, "env": env}
                  for (model, env), version in sorted(desired.items())
                  if (model, env) not in deployed or deployed[(model, env)].version != version]
    removals = [{"model": d.model, "version": d.version, "env": env, "folder": d.folder}
                for (model, env), d in sorted(deployed.items()) if prune and (model, env) not in desired]
    gone = [key for key in sorted(deployed) if key not in desired]
    return Plan(promotions=promotions, removals=removals, promotion_count=len(promotions),
                removal_count=len(removals), unchanged=len(desired) - len(promotions),
                held=0 if prune else len(gone), head=head)

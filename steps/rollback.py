"""rollback: put an environment back on an earlier version, by moving its alias in the registry.

The registry stays the source of truth (steps/rule.py). Rolling back therefore moves the alias
that selects the environment's version back to the target, and tags both versions with who
rolled back and why; the usual promotion then converges git and the cluster (the
`mlferry-rollback` WorkflowTemplate runs it right after this step). Since the alias now points
at the target, no webhook, reconcile or retry can re-deploy the bad version afterwards: only a
person moving the alias again can.

The target, unless given, is the version the environment's folder served before the current
one, read from the GitOps repo's history (the `Version:` trailers of its deploy commits).
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

import logging
from typing import Iterable

from hera.workflows import Input, Output

from mlferry.steps import gitops, registry, rule
from mlferry.steps.commit import current_owner
from mlferry.steps.layout import check_version, gitops_folder
from mlferry.steps.naming import check_environment_name, slugify
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import load_settings
from mlferry.steps.trailers import one_line

log = logging.getLogger(__name__)


class RollbackInput(Input):
    model: str
    env: str
    to: str = ""  # the version to go back to; "": the one deployed before the current one
    reason: str = ""
    trigger: str = "manual"


class RolledBack(Output):
    model: str
    env: str
    alias: str  # the alias that was moved
    bad: str  # the version rolled back from
    to: str  # the version the alias points at now


class RollbackRefused(ValueError):
    """Nothing to roll back, or not by moving an alias; nothing was changed."""


@as_argo_step
def rollback(inputs: RollbackInput) -> RolledBack:
    settings = load_settings()
    settings.environment(inputs.env)
    repo, branch = settings.require_gitops_repo(), settings.gitops_branch
    folder = gitops_folder(settings.team, slugify(inputs.model), inputs.env)
    _, there = current_owner(repo, branch, folder)
    if there is None or there.model != inputs.model:
        raise RollbackRefused(f"{inputs.model!r} is not deployed in {inputs.env}: nothing to roll back")
    if there.hold:
        raise RollbackRefused(f"{inputs.env} is held at v{there.version} ({there.hold}): `mlferry release` it "
                              "first, or hold the version you want with `mlferry hold --version`")
    mlflow = registry.client()
    alias = moving_alias(rule.select(registry.model_view(mlflow, inputs.model), inputs.env, settings), inputs.env)
    target = inputs.to or previous_version(deployed_versions(repo, branch, folder, inputs.model, inputs.env),
                                           there.version, inputs.env)
    registry.find_version(mlflow, inputs.model, version=check_version(target))  # exists and READY
    mlflow.post("registered-models/alias", {"name": inputs.model, "alias": alias, "version": target})
    log.info("moved @%s of %s from v%s to v%s", alias, inputs.model, there.version, target)
    env = check_environment_name(inputs.env)
    why = one_line(f"{inputs.trigger}: {inputs.reason}" if inputs.reason else inputs.trigger)
    registry.set_version_tags(mlflow, inputs.model, there.version,
                              {f"mlferry.{env}.rollback": f"rolled back to v{target} ({why})"})
    registry.set_version_tags(mlflow, inputs.model, target,
                              {f"mlferry.{env}.rollback": f"restored in place of v{there.version} ({why})"})
    return RolledBack(model=inputs.model, env=inputs.env, alias=alias, bad=there.version, to=target)


def moving_alias(chosen: rule.Selection, env: str) -> str:
    """The alias whose move changes what the rule selects: the one that selects it now."""
    aliases = [name for kind, name in chosen.by if kind == "alias"]
    if aliases:
        return aliases[0]
    if chosen.selected:
        raise RollbackRefused(f"{env}'s version is selected by {chosen.words()}, not by an alias: rollback moves "
                              "aliases; transition the stage back, or give the environment an alias")
    raise RollbackRefused(f"no alias selects a version for {env}: set one to the version to restore")


def deployed_versions(repo: str, branch: str, folder: str, model: str, env: str) -> list[str]:
    """The versions the folder served, newest first, from its deploy commits' trailers."""
    with gitops.clone_history(repo, branch) as history:
        if not history.head:
            return []
        return distinct(c.trailers.get("version", "") for c in history.commits(history.head, folder)
                        if c.trailers.get("model") == model and c.trailers.get("environment") == env)


def distinct(versions: Iterable[str]) -> list[str]:
    """Versions in order, empty ones and repeats of the one before dropped."""
    found: list[str] = []
    for version in versions:
        if version and (not found or found[-1] != version):
            found.append(version)
    return found


def previous_version(versions: list[str], current: str, env: str) -> str:
    """The newest version deployed before `current` that is not `current` itself."""
    for version in versions:
        if version != current:
            return version
    raise RollbackRefused(f"no earlier version than v{current} was ever deployed to {env}: "
                          "name the one to restore (--to VERSION)")

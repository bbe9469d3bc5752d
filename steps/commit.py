"""The commit step: write one model's rendered manifests into its GitOps folder, or remove it.

Argo runs it as ``python -m hera.workflows.runner -e steps.commit:commit``. The folder is
``teams/<team>/<slug>/<env>/`` and belongs to mlferry, so the step replaces it wholesale and
touches nothing else; running it twice commits once (see :mod:`steps.gitops`).

Each commit carries trailers that ``mlferry history`` reads back with ``git log``::

    promote fraud-detector v3 to staging

    Replace teams/ml/fraud-detector/staging with the 3 files rendered for
    version 3 of model fraud-detector.

    Model: fraud-detector
    Version: 3
    Environment: staging
    Alias: staging
    Workflow: mlferry-promote-x7k2p
    Training-Run: 0f3c9a51d2b84e6f9c1d7a2b3e4f5a6b
    Trigger: webhook
    Delivery: 3f2b6f8e-9a4d-4c1e-8b7a-2d5e1f0c9b6a

`Workflow` is the Argo workflow that wrote the commit (`argo get` / `mlferry runs show` it);
`Training-Run` is the MLflow run that trained the version (older commits call it `Run-Id`,
a name too easily read as the workflow's); `Alias` is there when an alias selected
the version, `Delivery` when an MLflow webhook delivery started the workflow. An empty value
leaves its trailer out.

Model names, run ids and triggers are arbitrary strings. A value that could break the trailer
block (a line break, a control character, surrounding blanks, a leading quote) is written as a
JSON string instead; :func:`parse_trailer_value` reverses :func:`trailer_value`.
"""

# No ``from __future__ import annotations`` here: Hera's runner reads the annotations of
# ``commit`` at run time and needs the classes, not strings.
import logging
import os
import re
from typing import Callable, Mapping

from hera.workflows import Input, Output

from mlferry.steps.outcome import as_argo_step
from mlferry.steps import gitops
from mlferry.steps.layout import check_version, parse_gitops_folder
from mlferry.steps.trailers import one_line, trailer_lines
from mlferry.steps.naming import slugify
from mlferry.steps.settings import load_settings

logger = logging.getLogger(__name__)

SUBJECT_MODEL_LENGTH = 50
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")


class CommitInput(Input):
    model: str
    version: str
    env: str
    folder: str
    files: dict[str, str]
    run_id: str = ""  # the MLflow training run: the Training-Run trailer
    trigger: str = "manual"
    remove: bool = False
    hold: str = ""  # this promotion records a hold (the rendered files carry it)
    release: bool = False  # this promotion ends the folder's hold
    workflow: str = ""  # the Argo workflow's name ({{workflow.name}})
    alias: str = ""  # the registry alias that selected the version, if one did
    delivery_id: str = ""  # the MLflow webhook delivery that started the workflow, if one did
    # Ask the registry again, under the GitOps mutex, whether the rule still selects this version
    # (promotions that follow the rule; a hold is deliberate and skips it).
    follow_rule: bool = False


class Commit(Output):
    sha: str
    changed: bool
    folder: str
    branch: str
    repo: str
    previous: str = ""  # the version the folder held before ("" when it did not exist)
    blocked: str = ""  # the hold that kept this version out (nothing was committed), else ""
    overtaken: str = ""  # what the rule selects now, when it no longer is this version (nothing committed)


class CommitRefused(ValueError):
    """The inputs ask for something mlferry will not write; nothing was committed."""


@as_argo_step
def commit(inputs: CommitInput) -> Commit:
    """The Argo step: settings from the environment, then :func:`commit_folder`."""
    settings = load_settings()
    repo = settings.require_gitops_repo()
    team, _, _ = _parse_folder(inputs.folder)
    if team != settings.team:
        raise CommitRefused(f"folder {inputs.folder!r} belongs to team {team!r}, not to this installation's "
                            f"team {settings.team!r}")
    overtaken = rule_moved_on(inputs, settings) if inputs.follow_rule and not (inputs.hold or inputs.remove) else ""
    if overtaken:
        logger.warning("%s: the rule selects %s now, no longer v%s: nothing is committed; the run the change "
                       "started deploys it", inputs.folder, overtaken, inputs.version)
        return Commit(sha="", changed=False, folder=inputs.folder, branch=settings.gitops_branch,
                      repo=gitops.display_url(repo), overtaken=overtaken)
    # The folder is read from the clone the commit is built in, at the very head it is built on (on
    # every attempt), under the GitOps mutex (workflows/tasks.py): no other mlferry writer moves it
    # between this read and the push.
    previous = ""

    def owner_allows(_head: str, folders) -> str:
        nonlocal previous
        files = folders[inputs.folder]
        there = plan_folder_owner(files, inputs.folder) if files else None
        previous = there.version if there else ""
        return check_owner(inputs.model, inputs.folder, there, hold=inputs.hold, release=inputs.release)

    done = commit_folder(inputs, repo, settings.gitops_branch, create_branch=settings.gitops_create_branch,
                         check=owner_allows)
    if done.blocked:
        logger.warning("%s is held at v%s (%s): v%s is not committed; `mlferry release` ends the hold",
                       inputs.folder, previous, done.blocked, inputs.version)
    return done.model_copy(update={"previous": previous})


def rule_moved_on(inputs: CommitInput, settings) -> str:
    """"" when the registry still selects ``inputs.version`` for the environment; else what it selects.

    Runs for one model and environment may overlap (an alias moved twice in a minute), and the
    GitOps mutex orders their commits, not their decisions: without this, the older decision could
    land last. Asked while holding the mutex, so a later move starts a run that commits after this.
    """
    from mlferry.steps import registry, rule

    chosen = rule.select(registry.model_view(registry.client(), inputs.model), inputs.env, settings)
    return "" if chosen.version == inputs.version else chosen.words()


def current_owner(repo: str, branch: str, folder: str):
    """(branch head, what the folder holds there: model, version, hold; None when it is absent)."""
    snapshot = gitops.read_snapshot(repo, branch, folder + "/")
    files = snapshot.folders(depth=4).get(folder, {})
    return snapshot.sha, plan_folder_owner(files, folder) if files else None


def plan_folder_owner(files, folder: str):
    """Who the folder's files say it belongs to (steps.plan.folder_owner, imported when first needed)."""
    from mlferry.steps.plan import folder_owner

    return folder_owner(files, folder)


def check_owner(model: str, folder: str, there, *, hold: str = "", release: bool = False) -> str:
    """Refuse another model's folder; the hold that keeps this run out, or "" when it may write.

    Two registered names can share a folder name (`Wine` and `wine-3889e6c049`): the first to be
    deployed owns it, and the other is refused, by name, instead of taking the folder over.
    """
    if there is None:
        return ""
    if there.model != model:
        raise CommitRefused(f"folder {folder!r} belongs to model {there.model!r}; model {model!r} "
                            "maps to the same folder name, so it is not deployed: rename one of them")
    if there.hold and not (hold or release):
        return there.hold
    return ""


def commit_folder(
    inputs: CommitInput,
    repo_url: str,
    branch: str,
    workdir: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    retry: gitops.RetryPolicy = gitops.RetryPolicy(),
    before_push: Callable[[], None] | None = None,
    create_branch: bool = True,
    check: gitops.FolderCheck | None = None,
) -> Commit:
    """Replace ``inputs.folder`` on ``branch`` of ``repo_url`` with ``inputs.files`` (or remove it).

    ``check`` reads the folder as the head holds it before anything is written (gitops.FolderCheck);
    what it returns, a hold's reason, keeps the commit out: ``blocked`` says why.
    """
    change = folder_change(inputs)
    logger.info("%s on %s of %s", change.message.splitlines()[0], branch, gitops.display_url(repo_url))
    published = gitops.publish_folder(repo_url, branch, change, workdir=workdir, environ=environ,
                                      retry=retry, before_push=before_push, create_branch=create_branch,
                                      check=check)
    if not published.stopped:
        logger.info("%s: %s at %s", inputs.folder, "committed" if published.changed else "unchanged",
                    published.sha or "(no branch)")
    return Commit(sha=published.sha, changed=published.changed, folder=inputs.folder, branch=branch,
                  repo=gitops.display_url(repo_url), blocked=published.stopped)


def folder_change(inputs: CommitInput) -> gitops.FolderChange:
    """Check the inputs and turn them into the folder replacement to publish."""
    _, slug, env = _parse_folder(inputs.folder)
    if env != inputs.env:
        raise CommitRefused(f"folder {inputs.folder!r} is for environment {env!r}, not {inputs.env!r}")
    if slug != _slug(inputs.model):
        raise CommitRefused(f"folder {inputs.folder!r} does not belong to model {inputs.model!r} "
                            f"(its folder name is {_slug(inputs.model)!r})")
    if inputs.remove:
        if inputs.files:
            raise CommitRefused("remove=True deletes the folder: pass no files")
        if inputs.version:
            check_version(inputs.version)
    else:
        check_version(inputs.version)
        check_file_names(inputs.files)
    return gitops.FolderChange.single(inputs.folder, dict(inputs.files), commit_message(inputs))


def _slug(model: str) -> str:
    try:
        return slugify(model)
    except ValueError as err:
        raise CommitRefused(str(err)) from None


def _parse_folder(folder: str) -> tuple[str, str, str]:
    try:
        return parse_gitops_folder(folder)
    except ValueError as err:
        raise CommitRefused(str(err)) from None


def check_file_names(files: Mapping[str, str]) -> None:
    """Files land flat in the folder: plain, visible, portable names only."""
    if not files:
        raise CommitRefused("no files to commit: a promotion needs at least a kustomization.yaml")
    for name in files:
        if not _FILE_NAME.match(name) or ".." in name:
            raise CommitRefused(
                f"file name {name!r} is not allowed: use a plain name of letters, digits, '.', '_' "
                "and '-' (no '/', no '..', not starting with '.')"
            )


def commit_message(inputs: CommitInput) -> str:
    model = _subject_text(inputs.model)
    if inputs.remove:
        subject = f"remove {model} from {inputs.env}"
        body = f"Delete {inputs.folder}: model {model} is no longer deployed to {inputs.env}."
    else:
        subject = f"promote {model} v{inputs.version} to {inputs.env}"
        count = len(inputs.files)
        body = (f"Replace {inputs.folder} with the {count} file{'s' * (count != 1)} rendered for\n"
                f"version {inputs.version} of model {model}.")
    trailers = {
        "Model": inputs.model,
        "Version": inputs.version,
        "Environment": inputs.env,
        "Alias": inputs.alias,
        "Workflow": inputs.workflow,
        "Training-Run": inputs.run_id,
        "Trigger": inputs.trigger,
        "Delivery": inputs.delivery_id,
    }
    return f"{subject}\n\n{body}\n\n" + "\n".join(trailer_lines(trailers)) + "\n"


def _subject_text(text: str) -> str:
    """A readable one-line rendering of a user string for the subject and body."""
    return one_line(text, SUBJECT_MODEL_LENGTH)

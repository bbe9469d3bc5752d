"""retire: remove model folders from the GitOps repo, in one commit.

Used when resolve finds that nothing selects a version for an environment any more (one folder:
the registry's own answer about the model says so) and by reconcile's prune (the folders plan
confirmed the same way). A held folder stays unless the run releases it. Argo CD's ApplicationSet
then deletes the Application, and with it the serving objects. Nothing happens when prune is off.
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

import logging

from hera.workflows import Input, Output

from mlferry.steps import gitops
from mlferry.steps.trailers import trailer_lines
from mlferry.steps.layout import gitops_folder, parse_gitops_folder, team_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.plan import Deployed, deployed_state
from mlferry.steps.trailers import one_line
from mlferry.steps.settings import load_settings

log = logging.getLogger(__name__)


class RetireInput(Input):
    model: str = ""  # one folder: a model and environment for which nothing selects a version
    env: str = ""
    release: bool = False  # the run ends a hold too: a held folder may go
    targets: list[dict[str, str]] = []  # several: [{model, env, folder?}] from the reconcile plan
    prune: str = "auto"  # "auto": the settings decide; "true" / "false" / "force" override
    trigger: str = "manual"
    workflow: str = ""  # the Argo workflow's name ({{workflow.name}}): the Workflow trailer


class Retired(Output):
    sha: str = ""
    changed: bool = False
    folders: list[str] = []
    removed: list[dict[str, str]] = []  # [{model, version, env}]: what the commit took away


@as_argo_step
def retire(inputs: RetireInput) -> Retired:
    settings = load_settings()
    if not (settings.prune if inputs.prune == "auto" else inputs.prune in ("true", "force")):
        log.info("prune is off: nothing is removed")
        return Retired()
    repo = settings.require_gitops_repo()
    # Read under the GitOps mutex: what each folder holds right now decides, not what the plan saw.
    snapshot = gitops.read_snapshot(repo, settings.gitops_branch, team_prefix(settings.team))
    chosen = removable(targets(inputs), deployed_state(snapshot), settings.team, inputs.release)
    change = retirement(chosen, settings.team, inputs.trigger, inputs.workflow)
    if change is None:
        return Retired(sha=snapshot.sha)
    published = gitops.publish_folder(repo, settings.gitops_branch, change, create_branch=settings.gitops_create_branch)
    removed = [{"model": d.model, "version": d.version, "env": env} for env, d in chosen]
    if published.changed:
        tag_retired(removed, published.sha)
    return Retired(sha=published.sha, changed=published.changed, folders=sorted(change.folders), removed=removed)


def targets(inputs: RetireInput) -> list[dict[str, str]]:
    single = [{"model": inputs.model, "env": inputs.env}] if inputs.model else []
    return single + list(inputs.targets)


def removable(wanted: list[dict[str, str]], deployed: dict[tuple[str, str], Deployed], team: str,
              release: bool) -> list[tuple[str, Deployed]]:
    """(env, folder) of each target that exists, belongs to its model, and is not held."""
    found = []
    for target in wanted:
        folder = gitops_folder(team, slugify(target["model"]), target["env"])
        if target.get("folder") and target["folder"] != folder:
            raise ValueError(f"folder {target['folder']!r} is not {target['model']!r}'s folder in {target['env']!r}")
        there = deployed.get((target["model"], target["env"]))
        if there is None:
            log.info("%s: no folder of %s to remove", folder, target["model"])
        elif there.hold and not release:
            log.warning("%s is held at v%s (%s): kept; `mlferry release` ends the hold", folder, there.version,
                        there.hold)
        else:
            found.append((target["env"], there))
    return found


def retirement(chosen: list[tuple[str, Deployed]], team: str, trigger: str,
               workflow: str = "") -> gitops.FolderChange | None:
    """The commit that removes each chosen folder (checked to be one mlferry owns)."""
    folders: dict[str, str] = {}
    for env, there in chosen:
        folder = gitops_folder(team, slugify(there.model), env)
        parse_gitops_folder(folder)
        folders[folder] = f"{one_line(there.model)} v{there.version} from {env}"
    if not folders:
        return None
    lines = [f"- {what}" for what in sorted(folders.values())]
    subject = (f"remove {next(iter(folders.values()))}" if len(folders) == 1
               else f"remove {len(folders)} models whose aliases are gone")
    trailers = trailer_lines({"Workflow": workflow, "Trigger": trigger})
    message = "\n".join([subject, "", *lines, "", *trailers]) + "\n"
    return gitops.FolderChange(folders={folder: {} for folder in folders}, message=message)


def tag_retired(removed: list[dict[str, str]], sha: str) -> None:
    """`mlferry.<env>.status=retired` on each version whose folder went; best effort, the removal
    stands (and is in git) whether or not the registry takes the tag."""
    from mlferry.steps.report import ReportInput, write_tags

    for entry in removed:
        try:
            write_tags(ReportInput(model=entry["model"], version=entry["version"], env=entry["env"],
                                   status="retired", commit=sha))
        except Exception as err:  # noqa: BLE001 - a tag is a courtesy here, the commit is the truth
            log.warning("could not tag %s v%s retired: %s", entry["model"], entry["version"], err)

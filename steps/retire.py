"""retire: remove model folders from the GitOps repo, in one commit.

Used when an alias is deleted (one folder, from the webhook) and by reconcile's prune (every
folder whose alias is gone). Argo CD's ApplicationSet then deletes the Application, and with it
the serving objects. Nothing happens when prune is off in the settings.
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

from hera.workflows import Input, Output

from mlferry.steps import gitops
from mlferry.steps.trailers import trailer_lines
from mlferry.steps.layout import gitops_folder, parse_gitops_folder
from mlferry.steps.naming import slugify
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import load_settings


class RetireInput(Input):
    model: str = ""  # one folder: the model and environment whose alias was deleted
    env: str = ""
    targets: list[dict[str, str]] = []  # several: [{model, env, folder?}] from the reconcile plan
    prune: str = "auto"  # "auto": the settings decide; "true" / "false" override
    trigger: str = "manual"
    workflow: str = ""  # the Argo workflow's name ({{workflow.name}}): the Workflow trailer


class Retired(Output):
    sha: str = ""
    changed: bool = False
    folders: list[str] = []


@as_argo_step
def retire(inputs: RetireInput) -> Retired:
    settings = load_settings()
    if not (settings.prune if inputs.prune == "auto" else inputs.prune == "true"):
        return Retired()
    repo = settings.require_gitops_repo()
    change = retirement(targets(inputs), settings.team, inputs.trigger, inputs.workflow)
    if change is None:
        return Retired()
    published = gitops.publish_folder(repo, settings.gitops_branch, change)
    return Retired(sha=published.sha, changed=published.changed, folders=sorted(change.folders))


def targets(inputs: RetireInput) -> list[dict[str, str]]:
    single = [{"model": inputs.model, "env": inputs.env}] if inputs.model else []
    return single + list(inputs.targets)


def retirement(targets: list[dict[str, str]], team: str, trigger: str,
               workflow: str = "") -> gitops.FolderChange | None:
    """The commit that removes each target's folder (checked to be one mlferry owns)."""
    folders: dict[str, str] = {}
    for target in targets:
        folder = gitops_folder(team, slugify(target["model"]), target["env"])
        if target.get("folder") and target["folder"] != folder:
            raise ValueError(f"folder {target['folder']!r} is not {target['model']!r}'s folder in {target['env']!r}")
        parse_gitops_folder(folder)
        folders[folder] = f"{target['model']} from {target['env']}"
    if not folders:
        return None
    lines = [f"- {what}" for what in sorted(folders.values())]
    subject = (f"remove {next(iter(folders.values()))}" if len(folders) == 1
               else f"remove {len(folders)} models whose aliases are gone")
    trailers = trailer_lines({"Workflow": workflow, "Trigger": trigger})
    message = "\n".join([subject, "", *lines, "", *trailers]) + "\n"
    return gitops.FolderChange(folders={folder: {} for folder in folders}, message=message)

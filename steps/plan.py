"""plan: what the registry wants deployed, against what the GitOps repo holds.

The reconcile schedule catches what webhooks cannot: deliveries MLflow dropped, changes made
while the receiver was down, and legacy stage transitions (which fire no webhook at all).
What to deploy is the rule's (steps/rule.py); a folder is removed only on positive evidence, the
model's own successful registry answer, and never more than `prune_max_share` of them at once.

Its cost grows with what changed, not with the registry's size: one paged registry listing
(aliases and latest-per-stage come with each registered model) and one shallow read of the
GitOps repo. The object store is not visited for unchanged entries: a folder only ever points
at a version after `publish` completed its manifest (the DAG orders commit after publish), and
each promotion it does start re-checks the copy anyway.
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import yaml
from hera.workflows import Input, Output

from mlferry.steps import gitops, registry, rule
from mlferry.steps.event_filter import TEMPLATE_START
from mlferry.steps.layout import gitops_folder, parse_gitops_folder, team_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import Settings, load_settings

log = logging.getLogger(__name__)
# libyaml's safe loader when present: ~10x faster, and reconcile parses every folder.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MODEL_ANNOTATION = "mlferry.io/model-name"
VERSION_ANNOTATION = "mlferry.io/version"
HOLD_ANNOTATION = "mlferry.io/hold"


class PlanInput(Input):
    prune: str = "auto"  # "auto": the settings decide; "true" / "false" override; "force": past the guard


class Plan(Output):
    promotions: list[dict[str, str]] = []  # [{model, version, env, was}]
    removals: list[dict[str, str]] = []  # [{model, version, env, folder, why}]: positive evidence only
    held: list[dict[str, str]] = []  # [{model, version, env, reason, wanted}]: a hold keeps the folder
    kept: list[dict[str, str]] = []  # [{model, version, env, folder, why}]: nothing selects it, not removed
    conflicts: list[dict[str, str]] = []  # [{model, env, why}]: refused (another model owns the folder, …)
    promotion_count: int = 0
    removal_count: int = 0
    unchanged: int = 0
    head: str = ""


@dataclass(frozen=True)
class Deployed:
    model: str
    version: str
    folder: str
    hold: str = ""  # the hold's reason; "" when the folder follows the rule


class PruneRefused(ValueError):
    """The plan would remove more folders than one run may: nothing is removed or promoted."""


@as_argo_step
def plan(inputs: PlanInput) -> Plan:
    found = current_plan(load_settings(), inputs.prune)
    # The plan, in the step's log before anything happens: what goes, what stays and why.
    for entry in found.removals:
        log.info("will remove %s v%s from %s: %s", entry["model"], entry["version"], entry["env"], entry["why"])
    for entry in found.held:
        log.info("held: %s v%s in %s (%s)", entry["model"], entry["version"], entry["env"], entry["reason"])
    for entry in found.kept:
        log.info("kept: %s v%s in %s: %s", entry["model"], entry["version"], entry["env"], entry["why"])
    for entry in found.conflicts:
        log.warning("refused: %s in %s: %s", entry["model"], entry["env"], entry["why"])
    return found


def current_plan(settings: Settings, prune: str = "auto") -> Plan:
    """The plan against the registry and the GitOps branch as they are now (the step, and dry runs).

    The registry's listing is mostly a wait on the server, and reading git is mostly this process's
    work: the listing runs in a thread while git is read and the folders parsed (at 2,000 models,
    0.8 s and 1 s that no longer add up).
    """
    repo = settings.require_gitops_repo()
    mlflow = registry.client()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="list-registry") as pool:
        listing = pool.submit(registry.list_models, mlflow)
        snapshot = gitops.read_snapshot(repo, settings.gitops_branch, team_prefix(settings.team))
        deployed = deployed_state(snapshot)
        return reconcile_plan(mlflow, snapshot, settings, prune, views=listing.result(), deployed=deployed)


def reconcile_plan(mlflow, snapshot: gitops.Snapshot, settings: Settings, prune: str = "auto", *,
                   views: list[registry.RegisteredModelView] | None = None,
                   deployed: dict[tuple[str, str], "Deployed"] | None = None) -> Plan:
    """The plan, with every removal confirmed by its own registry answer and the share guarded.

    `views` (the registry's listing) and `deployed` (the snapshot's folders) when already read.
    """
    views = registry.list_models(mlflow) if views is None else views
    pruning = settings.prune if prune == "auto" else prune in ("true", "force")
    deployed = deployed_state(snapshot) if deployed is None else deployed
    draft = plan_changes(rule.selections(views, settings), deployed, settings, pruning, snapshot.sha)
    confirmed = confirm_removals(draft, lambda name: _view_or_missing(mlflow, name), settings)
    return guard_prune(confirmed, len(deployed), settings.prune_max_share, force=prune == "force")


def _view_or_missing(mlflow, name: str) -> registry.RegisteredModelView | None:
    """The model's own registry answer; None when that answer is "no such model"."""
    try:
        return registry.model_view(mlflow, name)
    except registry.ModelMissing:
        return None


def deployed_state(snapshot: gitops.Snapshot) -> dict[tuple[str, str], Deployed]:
    """(model, env) → what the folder serves, read from the annotations render wrote."""
    deployed = {}
    for folder, files in snapshot.folders(depth=4).items():
        try:
            _, slug, env = parse_gitops_folder(folder)
        except ValueError:
            continue  # not a folder mlferry owns
        there = folder_owner(files, folder)
        if there and slugify(there.model) == slug:
            deployed[(there.model, env)] = there
    return deployed


def folder_owner(files: dict[str, str], folder: str = "") -> Deployed | None:
    """Who a folder's files say it belongs to (model, version, hold), or None for no annotation."""
    found = _annotations(files.values())
    if not found.get(MODEL_ANNOTATION):
        return None
    return Deployed(found[MODEL_ANNOTATION], found.get(VERSION_ANNOTATION, ""), folder,
                    found.get(HOLD_ANNOTATION, ""))


def _annotations(texts: Iterable[str]) -> dict[str, str]:
    for text in texts:
        try:
            found = _annotations_read_ahead(text)
            if found is None:  # anything the quick reading does not take for sure: the whole file, as always
                found = _annotations_loaded(text)
        except yaml.YAMLError:
            continue
        if found:
            return found
    return {}


def _annotations_loaded(text: str) -> dict[str, str]:
    for doc in yaml.load_all(text, Loader=_LOADER):
        notes = ((doc or {}).get("metadata") or {}).get("annotations") if isinstance(doc, dict) else None
        if isinstance(notes, dict) and MODEL_ANNOTATION in notes:
            return notes
    return {}


_STRING_TAG = "tag:yaml.org,2002:str"
_RESOLVER = yaml.SafeLoader("")  # only its resolve(): which type a plain scalar is
_PLAIN_IS_STRING: dict[str, bool] = {}  # plain scalar → whether YAML reads it as a string (keys repeat)
_MAPPING_START, _MAPPING_END = yaml.MappingStartEvent, yaml.MappingEndEvent
_COLLECTION_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_COLLECTION_END = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _annotations_read_ahead(text: str) -> dict[str, str] | None:
    """The first document's `metadata.annotations` that name a model, read from the parser's events
    and no further than the end of `metadata`; {} when no document has them.

    Reconcile reads every folder of the team, and building whole documents (a Deployment is
    ~100 nodes) cost 1.6 ms a folder: 6 s at 2,000 models. Where render puts them, at the top of
    the first document, this reads a tenth of the events and builds one small dict. Anything the
    events alone cannot say for sure (an anchor, an alias, a tag, a key or value that is not a
    plain string, a key repeated before the annotations were found) returns None, and the caller
    loads the whole file as before. What it does not see: a YAML error after `metadata` (kubectl
    and Argo CD refuse such a file), and a second top-level `metadata:` key after the first.
    """
    loader = _LOADER(text)
    try:
        event = loader.get_event  # the C parser's, one event a call; None past the end
        while True:
            current = event()
            if current is None or type(current) is yaml.StreamEndEvent:
                return {}
            if type(current) is yaml.DocumentStartEvent:
                found = _document_annotations(event)
                if found is None or found:
                    return found
    finally:
        loader.dispose()


def _document_annotations(event) -> dict[str, str] | None:
    """One document's metadata.annotations (None: not sure, {}: none naming a model); reads the
    document's events up to the end of its metadata, or all of them."""
    root = event()
    if type(root) is not _MAPPING_START or root.anchor or root.tag:
        unsure = type(root) is not yaml.ScalarEvent or root.anchor or root.tag
        return None if unsure else _skip_document(event)
    found = _seek_key(event, "metadata", set())
    if found is None:
        return None
    if not found:
        return _skip_document(event)
    notes = _annotations_in_metadata(event)
    if notes is None:
        return None
    return notes if MODEL_ANNOTATION in notes else _skip_document(event)


def _annotations_in_metadata(event) -> dict[str, str] | None:
    """The string pairs of metadata's `annotations` ({} when it has none), reading to metadata's end."""
    start = event()
    if type(start) is not _MAPPING_START or start.anchor or start.tag:
        return None
    seen: set[str] = set()
    found = _seek_key(event, "annotations", seen)
    if not found:
        return None if found is None else {}
    inner = event()
    if type(inner) is not _MAPPING_START or inner.anchor or inner.tag:
        return None
    notes: dict[str, str] = {}
    while type(key := event()) is not _MAPPING_END:
        text, value = _plain_string(key), _plain_string(event())
        if text is None or value is None or text in notes:
            return None
        notes[text] = value
    return notes if _seek_key(event, None, seen) is False else None  # the rest of metadata: no key twice


def _seek_key(event, wanted: str | None, seen: set[str]) -> bool | None:
    """Through a mapping's pairs: True when the key `wanted` was read (its value comes next), False at
    the mapping's end, None when unsure (a key not a plain string, or seen twice; an anchor or alias
    in a value passed over)."""
    while True:
        key = event()
        if type(key) is _MAPPING_END:
            return False
        name = _plain_string(key)
        if name is None or name in seen:
            return None
        seen.add(name)
        if name == wanted:
            return True
        if not _skip_node(event):
            return None


def _plain_string(event) -> str | None:
    """A scalar's text when YAML reads it as a string, with no anchor or tag; else None."""
    if type(event) is not yaml.ScalarEvent or event.anchor or event.tag:
        return None
    value = event.value
    if event.implicit[0]:  # plain (unquoted): a string unless it reads as a number, a bool, null…
        plain = _PLAIN_IS_STRING.get(value)
        if plain is None:
            plain = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STRING_TAG
            if len(_PLAIN_IS_STRING) < 4096:
                _PLAIN_IS_STRING[value] = plain
        if not plain:
            return None
    return value


def _skip_node(event) -> bool:
    """Past one node (True); False when it holds an anchor, an alias, or the stream ends."""
    depth = 0
    while True:
        current = event()
        kind = type(current)
        if current is None or kind is yaml.AliasEvent or getattr(current, "anchor", None):
            return False
        if kind in _COLLECTION_START:
            depth += 1
        elif kind in _COLLECTION_END:
            depth -= 1
        if depth == 0:
            return True


def _skip_document(event) -> dict[str, str] | None:
    """{} once the document has ended (the next document may name the model); None on an alias."""
    while True:
        current = event()
        if current is None or type(current) is yaml.DocumentEndEvent:
            return {}
        if type(current) is yaml.AliasEvent:
            return None


def plan_changes(selected: dict[tuple[str, str], rule.Selection], deployed: dict[tuple[str, str], Deployed],
                 settings: Settings, prune: bool, head: str = "") -> Plan:
    """What to do about every (model, env) the registry selects or git holds (no I/O).

    Removals here are candidates: :func:`confirm_removals` asks the registry about each model.
    """
    owners = {(slugify(d.model), env): d.model for (_, env), d in deployed.items()}
    promotions, held, conflicts, unchanged = [], [], [], 0
    for (model, env), chosen in sorted(selected.items()):
        there = deployed.get((model, env))
        if TEMPLATE_START in model:
            conflicts.append({"model": model, "env": env, "why": f"its name holds {TEMPLATE_START!r}, which Argo "
                              "reads as a template variable in the fan-out: rename the registered model"})
            continue
        owner = owners.setdefault((slugify(model), env), model)
        if owner != model:
            folder = gitops_folder(settings.team, slugify(model), env)
            conflicts.append({"model": model, "env": env, "why": f"its folder {folder} belongs to model "
                                                               f"{owner!r}; rename one of them"})
        elif there and there.hold:
            held.append(_held(there, env, chosen.version))
        elif there and there.version == chosen.version:
            unchanged += 1
        else:
            promotions.append({"model": model, "version": chosen.version, "env": env,
                               "was": there.version if there else ""})
    removals, kept = [], []
    for (model, env), there in sorted(deployed.items()):
        if (model, env) in selected:
            continue
        if there.hold:
            held.append(_held(there, env, ""))
        elif env not in settings.environments:
            kept.append(_folder(there, env, f"environment {env!r} is not in this configuration; "
                                            "check --config (removing is left to a run that knows it)"))
        elif not prune:
            kept.append(_folder(there, env, "nothing selects a version and prune is off"))
        else:
            removals.append(_folder(there, env, "no alias or stage selects a version"))
    return Plan(promotions=promotions, removals=removals, held=held, kept=kept, conflicts=conflicts,
                promotion_count=len(promotions), removal_count=len(removals), unchanged=unchanged, head=head)


def _held(there: Deployed, env: str, wanted: str) -> dict[str, str]:
    return {"model": there.model, "version": there.version, "env": env, "reason": there.hold, "wanted": wanted}


def _folder(there: Deployed, env: str, why: str) -> dict[str, str]:
    return {"model": there.model, "version": there.version, "env": env, "folder": there.folder, "why": why}


def confirm_removals(draft: Plan, ask: Callable[[str], registry.RegisteredModelView | None],
                     settings: Settings) -> Plan:
    """Keep a removal only on positive evidence: the model's own, successful registry answer says
    that no alias or stage selects a version for the environment, or that the model is gone.
    An answer that selects one after all (the listing was stale or missed the model) turns the
    removal into a promotion; a failed answer raises, and nothing is removed."""
    answers = {name: ask(name) for name in sorted({r["model"] for r in draft.removals})}
    removals, promotions = [], list(draft.promotions)
    for removal in draft.removals:
        view = answers[removal["model"]]
        chosen = rule.select(view, removal["env"], settings) if view else rule.Selection()
        if chosen.selected:
            promotions.append({"model": removal["model"], "version": chosen.version, "env": removal["env"],
                               "was": removal["version"]})
        else:
            why = "the registry has no such model any more" if view is None else removal["why"]
            removals.append({**removal, "why": why})
    return draft.model_copy(update={"removals": removals, "removal_count": len(removals),
                                    "promotions": promotions, "promotion_count": len(promotions)})


def guard_prune(plan: Plan, folders: int, max_share: float, force: bool = False) -> Plan:
    """Refuse a plan that removes more than `max_share` of the folders, or all of them."""
    count = plan.removal_count
    if force or not count or (count <= max_share * folders and count < folders):
        return plan
    share = "every one" if count >= folders else f"more than {max_share:.0%}"
    names = ", ".join(f"{r['model']} from {r['env']}" for r in plan.removals[:5])
    raise PruneRefused(
        f"refusing to remove {count} of the {folders} model folders in one run ({share}: {names}"
        f"{', …' if count > 5 else ''}); when the registry really dropped them, run reconcile with "
        "prune=force (mlferry reconcile --prune force), else check MLFLOW_TRACKING_URI and its credentials")

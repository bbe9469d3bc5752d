"""`mlferry status`: every model in every environment, as the registry, git and the object store
each see it, and where they disagree.

One row per (model, environment) that the registry selects (an alias or a legacy stage) or
that has a folder in the GitOps repo. Requests stay proportional to what is shown:

- registry: one paged listing (aliases and latest-per-stage come with each model), the same
  one `reconcile` reads, and the same rule (:func:`steps.rule.select`) picks the version;
- GitOps repo: one shallow read of ``teams/<team>/`` for the folders and their annotations
  (:func:`steps.gitops.read_snapshot`, as `reconcile` does), and one blobless clone with one
  streamed `git log` for each folder's latest commit (:mod:`mlferry.history`), run in parallel;
- object store: one HEAD of ``models/<slug>/<version>/mlferry-manifest.json`` per row shown
  that has a version in git (plus one HEAD of the bucket, so a wrong bucket is said plainly).
  That says the copy was completed, not that its bytes are still the published ones: the
  publish step checks each object's stored SHA-256 against the manifest (and copies again what
  differs) whenever the version is promoted again.
"""

from __future__ import annotations

import dataclasses
import shlex
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from mlferry.history import FolderEvent, GitOpsHistory, age
from mlferry.table import format_table, printable
from mlferry.steps import gitops, plan, registry, rule
from mlferry.steps.deploy_status import DeployStatus, StatusSource, status_source
from mlferry.steps.layout import MANIFEST_NAME, gitops_folder, model_prefix, parse_gitops_folder, team_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.settings import Settings, SettingsError
from mlferry.steps.store import ObjectStore

# Drift: what disagrees, each with what to do about it.
VERSION_DIFFERS = "version-differs"  # the registry selects another version than git holds
NOT_DEPLOYED = "not-deployed"  # the registry selects a version; git has no folder
NOT_PUBLISHED = "not-published"  # git's version has no complete copy in the object store
NO_ALIAS = "no-alias"  # a folder in git that no alias or stage selects any more
UNREADABLE = "unreadable-folder"  # a folder under teams/<team>/ without mlferry's annotations
CONFLICTING_ALIASES = "conflicting-aliases"  # two aliases for one environment, two versions
HELD = "held"  # a hold keeps the folder at another version than the rule selects


class FleetError(RuntimeError):
    """A source could not be read; the message is one line saying what to do."""


@dataclasses.dataclass(frozen=True)
class Drift:
    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class Row:
    model: str  # "" for a folder whose model mlferry cannot tell
    env: str
    folder: str
    registry_version: str = ""  # "" when no alias or stage selects a version
    selected_by: tuple[tuple[str, str], ...] = ()  # (("alias", "production"),) or (("stage", "Production"),)
    git_version: str = ""  # "" when git has no folder (or it names no version)
    in_git: bool = False
    hold: str = ""  # the folder's hold (steps/rule.py), "" when it follows the rule
    published: bool | None = None  # None: nothing in git to check
    last: FolderEvent | None = None
    drift: tuple[Drift, ...] = ()
    deployed: DeployStatus | None = None  # what the status source (verify setting) says runs; None: no source

    @property
    def in_sync(self) -> bool:
        return not self.drift

    def as_json(self, now: datetime) -> dict:
        return {
            "model": self.model, "env": self.env, "folder": self.folder,
            "registry": ({"version": self.registry_version,
                          "selected_by": [{"kind": kind, "name": name} for kind, name in self.selected_by]}
                         if self.registry_version else None),
            "git": ({"version": self.git_version, **({"hold": self.hold} if self.hold else {})}
                    if self.in_git else None),
            "published": self.published,
            "last_commit": self.last.as_json(now) if self.last else None,
            "drift": [{"code": d.code, "message": d.message} for d in self.drift],
            "in_sync": self.in_sync,
            "deployed": dataclasses.asdict(self.deployed) if self.deployed else None,
        }


@dataclasses.dataclass(frozen=True)
class FleetStatus:
    registry: str
    repo: str
    branch: str
    head: str
    bucket: str
    team: str
    env: str  # the --env filter, "" for all
    rows: list[Row]
    source: str = ""  # the status source's name ("local", "argocd"); "" when none is configured

    @property
    def drifting(self) -> list[Row]:
        return [r for r in self.rows if r.drift]

    def as_json(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(timezone.utc)
        return {"registry": self.registry, "repo": self.repo, "branch": self.branch, "head": self.head,
                "bucket": self.bucket, "team": self.team, "env": self.env or None,
                "rows": [r.as_json(now) for r in self.rows], "drifting": len(self.drifting),
                "deployed_source": self.source or None}

    def table(self, now: datetime | None = None) -> str:
        now = now or datetime.now(timezone.utc)
        head = f"@{self.head[:12]}" if self.head else " (branch not created yet)"
        intro = (f"registry {self.registry} · gitops {self.repo} {self.branch}{head} · "
                 f"bucket s3://{self.bucket} · team {self.team}\n")
        header = ["MODEL", "ENV", "REGISTRY", "GIT", "PUBLISHED", "LAST CHANGE", "AGE", "DRIFT"]
        rows = [_cells(row, now) for row in self.rows]
        if self.source:  # what runs, as the verify step's source sees it: only when there is one
            header += ["DEPLOYED", "HEALTH"]
            rows = [cells + _deployed_cells(row.deployed) for cells, row in zip(rows, self.rows)]
        if not rows:
            scope = f" for environment {self.env}" if self.env else ""
            return (intro + format_table(header, [])
                    + f"(nothing to show{scope}: no alias or stage selects a model version, "
                      f"and {team_prefix(self.team)} holds no model folder)\n")
        details = [f"  {printable(r.model or r.folder, 200)} in {r.env}: {d.message}"
                   for r in self.drifting for d in r.drift]
        count = f"{len(self.rows)} row{'s' * (len(self.rows) != 1)}"
        summary = (f"{count}, all in sync\n" if not details else
                   f"{count}, {len(self.drifting)} drifting:\n" + "\n".join(details) + "\n")
        return intro + format_table(header, rows) + "\n" + summary + self._not_running()

    def _not_running(self) -> str:
        """Why each folder the status source finds failed or absent is so, one line each."""
        lines = [f"  {printable(r.model or r.folder, 200)} in {r.env}: {r.deployed.health}: "
                 f"{printable(r.deployed.message, 300)}"
                 for r in self.rows if r.deployed and r.deployed.health in ("Degraded", "Missing")]
        return f"not running ({self.source}):\n" + "\n".join(lines) + "\n" if lines else ""


def _cells(row: Row, now: datetime) -> list[str]:
    selectors = " ".join(f"@{name}" if kind == "alias" else f"stage {name}" for kind, name in row.selected_by)
    registry_cell = f"v{row.registry_version} {selectors}" if row.registry_version else "-"
    git_cell = (f"v{row.git_version}" if row.git_version else "?") if row.in_git else "-"
    git_cell += " held" if row.hold else ""
    published = {True: "yes", False: "NO", None: "-"}[row.published]
    last = f"{row.last.commit[:10]} {row.last.kind}" if row.last else "-"
    when = age(row.last.age_seconds(now)) if row.last else "-"
    drift = ", ".join(d.code for d in row.drift) or "in sync"
    return [printable(row.model, 64) or "?", row.env, registry_cell, git_cell, published, last, when, drift]


def _deployed_cells(deployed: DeployStatus | None) -> list[str]:
    if deployed is None:
        return ["-", "-"]
    sync = "" if deployed.sync == "Synced" else f" {deployed.sync}"
    return [deployed.revision[:10] or "-", deployed.health + sync]


# ---------------------------------------------------------------------------------------------
# Reading the three sources


def fleet_status(settings: Settings, *, env: str = "", environ: Mapping[str, str] | None = None,
                 mlflow=None, store: ObjectStore | None = None, source: StatusSource | None = None) -> FleetStatus:
    """`source`: where to read what each folder runs (the verify setting's, by default; None: not shown)."""
    source = source or status_source(settings)
    repo, branch = settings.require_gitops_repo(), settings.gitops_branch
    mlflow = mlflow or _registry_client()
    prefix = team_prefix(settings.team)
    with ThreadPoolExecutor(max_workers=2) as pool:
        listing = pool.submit(_list_models, mlflow)
        reading = pool.submit(gitops.read_snapshot, repo, branch, prefix, environ=environ)
        with GitOpsHistory.clone(repo, branch, environ=environ) as history:
            models, snapshot = listing.result(), reading.result()
            rows = compare(models, snapshot, settings)
            rows = _only_env(rows, env, settings)
            events = history.events(prefix, rev=snapshot.sha, until_seen={r.folder for r in rows})
    latest: dict[str, FolderEvent] = {}
    for event in events:  # newest first: keep the first one seen per folder
        latest.setdefault(event.folder, event)
    rows = [dataclasses.replace(r, last=latest.get(r.folder)) for r in rows]
    rows = check_published(rows, store or ObjectStore.from_env(settings.bucket, environ), settings)
    rows = read_deployed(rows, source) if source else rows
    return FleetStatus(registry=shown_uri(mlflow.tracking_uri), repo=gitops.display_url(repo),
                       branch=branch, head=snapshot.sha, bucket=settings.bucket, team=settings.team,
                       env=env, rows=rows, source=source.name if source else "")


def _registry_client():
    try:
        return registry.client()
    except ValueError as err:
        raise FleetError(f"cannot use the MLflow registry: {err}") from None


def _list_models(mlflow) -> list[registry.RegisteredModelView]:
    from mlferry.steps.mlflow_api import MlflowApiError, MlflowUnreachable

    try:
        return registry.list_models(mlflow)
    except MlflowUnreachable as err:
        raise FleetError(str(err)) from None
    except MlflowApiError as err:
        raise FleetError(f"cannot list the registered models at {shown_uri(mlflow.tracking_uri)} ({err}); "
                         "check MLFLOW_TRACKING_URI and the MLflow credentials") from None


def shown_uri(uri: str) -> str:
    """A tracking URI fit for output: without any user:password part, otherwise as given."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))



def _only_env(rows: list[Row], env: str, settings: Settings) -> list[Row]:
    if not env:
        return rows
    if env not in settings.environments and not any(r.env == env for r in rows):
        known = ", ".join(sorted(settings.environments)) or "none"
        raise SettingsError(f"unknown environment {env!r}; configured environments: {known}")
    return [r for r in rows if r.env == env]


def check_published(rows: list[Row], store: ObjectStore, settings: Settings) -> list[Row]:
    """One HEAD per (model, version) in git: does its complete copy (the manifest) exist?

    Existence only: an object replaced since publishing still shows as published here (checking
    every object's checksum would cost a read of each manifest and a HEAD per file, per row).
    `mlferry promote` of the same version checks and repairs them (steps/publish.py)."""
    keys = {(r.folder, r.git_version): _manifest_key(r) for r in rows if r.git_version}
    keys = {k: v for k, v in keys.items() if v}
    if not keys:
        return rows
    store.check_bucket()
    with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
        found = dict(zip(keys, pool.map(lambda key: store.head(key) is not None, keys.values())))
    out = []
    for row in rows:
        if (row.folder, row.git_version) not in found:
            out.append(row)
            continue
        published = found[(row.folder, row.git_version)]
        drift = row.drift if published else row.drift + (_not_published(row, settings),)
        out.append(dataclasses.replace(row, published=published, drift=drift))
    return out


def read_deployed(rows: list[Row], source: StatusSource) -> list[Row]:
    """What the source says each folder in git runs; a source that cannot answer says so per row."""
    def read(row: Row) -> DeployStatus:
        try:
            return source.read(row.folder)
        except Exception as err:  # the report still shows the registry, git and the store
            return DeployStatus(message=f"cannot read {source.name}: {str(err).splitlines()[0] if str(err) else err!r}")

    in_git = [r for r in rows if r.in_git]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(in_git)))) as pool:
        found = dict(zip((r.folder for r in in_git), pool.map(read, in_git)))
    return [dataclasses.replace(r, deployed=found.get(r.folder)) for r in rows]


def _manifest_key(row: Row) -> str:
    _, slug, _ = parse_gitops_folder(row.folder)
    try:
        return model_prefix(slug, row.git_version) + MANIFEST_NAME
    except ValueError:  # a version annotation that is not a number: nothing to look up
        return ""


# ---------------------------------------------------------------------------------------------
# Comparing (no I/O)


def compare(models: Iterable[registry.RegisteredModelView], snapshot: gitops.Snapshot,
            settings: Settings) -> list[Row]:
    """One row per (model, env) the registry selects or git holds, drift flagged (no I/O)."""
    selected = rule.selections(list(models), settings)
    deployed = plan.deployed_state(snapshot)
    rows = []
    for model, env in sorted(set(selected) | set(deployed)):
        chosen, there = selected.get((model, env), rule.Selection()), deployed.get((model, env))
        row = Row(model=model, env=env,
                  folder=there.folder if there else gitops_folder(settings.team, slugify(model), env),
                  registry_version=chosen.version, selected_by=chosen.by,
                  git_version=there.version if there else "", in_git=there is not None,
                  hold=there.hold if there else "")
        ignored = tuple((name, version) for (_, name), version in zip(chosen.ignored, chosen.ignored_versions))
        rows.append(dataclasses.replace(row, drift=_drift(row, ignored, settings)))
    owned = {d.folder for d in deployed.values()}
    for folder in sorted(snapshot.folders(depth=4)):
        if folder in owned:
            continue
        try:
            _, _, env = parse_gitops_folder(folder)
        except ValueError:
            continue  # not a folder mlferry owns: none of our business
        rows.append(Row(model="", env=env, folder=folder, in_git=True, drift=(Drift(
            UNREADABLE, f"{folder} has no mlferry.io/model-name annotation matching its name: "
                        "written or edited by hand; promote the model again or remove the folder"),)))
    return rows


def _drift(row: Row, ignored: tuple[tuple[str, str], ...], settings: Settings) -> tuple[Drift, ...]:
    found = []
    promote = (f"mlferry promote {shlex.quote(row.model)} --version {row.registry_version} --env {row.env}"
               if row.registry_version else "")
    if row.hold:
        wanted = f"the rule selects v{row.registry_version}" if row.registry_version else "nothing selects a version"
        if row.registry_version != row.git_version:
            found.append(Drift(HELD, f"held at v{row.git_version} ({row.hold}); {wanted}; "
                                     f"`mlferry release {shlex.quote(row.model)} --env {row.env}` ends the hold"))
    elif row.registry_version and not row.in_git:
        found.append(Drift(NOT_DEPLOYED, f"the registry selects v{row.registry_version} but git has no folder; "
                                         f"the next reconcile deploys it, or run `{promote}`"))
    elif row.registry_version and row.git_version != row.registry_version:
        held = f"v{row.git_version}" if row.git_version else "a folder without a version annotation"
        found.append(Drift(VERSION_DIFFERS, f"the registry selects v{row.registry_version} but git holds {held}; "
                                            f"the next reconcile deploys it, or run `{promote}`"))
    elif not row.registry_version and row.in_git:
        then = ("the next reconcile removes the folder" if settings.prune else
                "prune is off, so it stays until you remove the folder or set an alias again")
        found.append(Drift(NO_ALIAS, f"no alias or stage selects a version for {row.env} any more; {then}"))
    if ignored:
        losers = ", ".join(f"@{alias} → v{version}" for alias, version in ignored)
        found.append(Drift(CONFLICTING_ALIASES, f"aliases for {row.env} disagree: {losers} ignored, "
                                                f"v{row.registry_version} wins; point them at one version"))
    return tuple(found)


def _not_published(row: Row, settings: Settings) -> Drift:
    _, slug, _ = parse_gitops_folder(row.folder)
    where = f"s3://{settings.bucket}/{model_prefix(slug, row.git_version)}"
    again = (f"; run `mlferry promote {shlex.quote(row.model)} --version {row.git_version} --env {row.env}` "
             "to publish it again" if row.model else "")
    return Drift(NOT_PUBLISHED, f"git's v{row.git_version} has no complete copy at {where} "
                                f"(no {MANIFEST_NAME}): its pods cannot load it{again}")

"""What happened to GitOps folders, read back from git: `mlferry history` and the last-commit
column of `mlferry status`.

MLflow keeps no history of its aliases; the GitOps repo does. Every promotion commit carries
the trailers `Model:`, `Version:`, `Environment:`, `Workflow:`, `Training-Run:`, `Trigger:`,
and `Alias:` and `Delivery:` when an alias or a webhook was behind it (see
:mod:`steps.commit`; older commits have `Run-Id:` for `Training-Run:`, and no `Workflow:`), a
removal commit `Workflow:` and `Trigger:`, so one `git log` over a folder (or over the whole
team) with the changed paths and the trailers is the deployment history.

This module is the operator's view: which commit did what to which folder, and how to show it.
Reading git (the blobless clone, the streamed log, the trailers, the errors) is the adapter's
job, :mod:`steps.gitops.log`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
from datetime import datetime, timedelta, timezone
from typing import Collection, Iterator, Mapping

from mlferry.steps import gitops
from mlferry.steps.layout import parse_gitops_folder, team_prefix
from mlferry.steps.naming import slugify
from mlferry.table import format_table, printable

DEPLOY, REMOVE, EDIT = "deploy", "remove", "edit"


@dataclasses.dataclass(frozen=True)
class FolderEvent:
    """One commit's change to one GitOps folder, newest first in every list we return.

    kind is ``deploy`` (an mlferry promotion wrote the folder), ``remove`` (the commit deleted
    the folder) or ``edit`` (any other change: a hand-made commit, or one without trailers).
    """

    folder: str
    kind: str
    version: str  # from the Version trailer; "" when the commit does not say
    trigger: str
    training_run: str  # the MLflow run that trained the version (Training-Run, formerly Run-Id)
    commit: str
    when: datetime
    author: str
    subject: str
    model: str = ""  # from the Model trailer, when it names this folder's model
    workflow: str = ""  # the Argo workflow that made the commit (Workflow)
    alias: str = ""  # the alias that selected the version (Alias)
    delivery_id: str = ""  # the webhook delivery that started the workflow (Delivery)

    @property
    def env(self) -> str:
        return self.folder.rsplit("/", 1)[-1]

    def age_seconds(self, now: datetime) -> int:
        return max(0, int((now - self.when).total_seconds()))

    def as_json(self, now: datetime) -> dict:
        return {"folder": self.folder, "env": self.env, "kind": self.kind, "model": self.model,
                "version": self.version, "alias": self.alias, "trigger": self.trigger, "workflow": self.workflow,
                "training_run": self.training_run, "delivery_id": self.delivery_id,
                "commit": self.commit, "when": self.when.isoformat(), "age_seconds": self.age_seconds(now),
                "author": self.author, "subject": self.subject}


class GitOpsHistory:
    """The GitOps folders' events, read from one branch's history.

    Use as a context manager: ``with GitOpsHistory.clone(url, branch) as history: ...``.
    """

    def __init__(self, log: gitops.History):
        self.log = log

    @property
    def head(self) -> str:
        return self.log.head

    @classmethod
    @contextlib.contextmanager
    def clone(cls, remote_url: str, branch: str, *,
              environ: Mapping[str, str] | None = None) -> Iterator["GitOpsHistory"]:
        with gitops.clone_history(remote_url, branch, environ=environ) as log:
            yield cls(log)

    def events(self, path: str, *, rev: str = "", until_seen: Collection[str] | None = None) -> list[FolderEvent]:
        """Every change to the folders under ``path``, newest first (one `git log`).

        ``rev`` starts the log at that commit instead of the head (when the clone has it).
        ``until_seen`` stops the reading once each of those folders has its latest change:
        what `mlferry status` needs, without reading the rest of the history.
        """
        if not self.head:
            return []
        start = rev if rev and self.log.has(rev) else self.head
        found: list[FolderEvent] = []
        maybe_removed: list[int] = []
        unseen = set(until_seen) if until_seen is not None else None
        for commit in self.log.commits(start, path):
            for folder, statuses in sorted(_folder_changes(commit).items()):
                if all(s == "D" for s in statuses):
                    maybe_removed.append(len(found))
                found.append(_event(commit, folder))
                if unseen is not None:
                    unseen.discard(folder)
            if unseen is not None and not unseen:
                break
        # A commit that deleted every file it touched in a folder may still have left other
        # files there: ask git, in one call, which folders were really gone after the commit.
        gone = self.log.missing([f"{found[i].commit}:{found[i].folder}" for i in maybe_removed])
        for index, missing in zip(maybe_removed, gone):
            if missing:
                found[index] = dataclasses.replace(found[index], kind=REMOVE)
        return found


def _folder_changes(commit: gitops.Commit) -> dict[str, list[str]]:
    """GitOps folder → git status letters of its changed files (other paths are not ours)."""
    changes: dict[str, list[str]] = {}
    for status, path in commit.changes:
        folder = path.rsplit("/", 1)[0]
        if _is_folder(folder):
            changes.setdefault(folder, []).append(status)
    return changes


def _is_folder(folder: str) -> bool:
    try:
        parse_gitops_folder(folder)
    except ValueError:
        return False
    return True


def _event(commit: gitops.Commit, folder: str) -> FolderEvent:
    trailers = commit.trailers
    _, slug, env = parse_gitops_folder(folder)
    model = trailers.get("model", "")
    ours = bool(model) and trailers.get("environment") == env and _slug(model) == slug
    mine = trailers if ours else {}  # what a commit says of another folder's model is not this folder's
    return FolderEvent(folder=folder, kind=DEPLOY if mine.get("version") else EDIT,  # REMOVE: the caller decides
                       version=mine.get("version", ""), trigger=trailers.get("trigger", ""),
                       training_run=mine.get("training-run") or mine.get("run-id", ""),  # Run-Id: older commits
                       commit=commit.sha, when=commit.when, author=commit.author, subject=commit.subject,
                       model=mine.get("model", ""), workflow=trailers.get("workflow", ""),
                       alias=mine.get("alias", ""), delivery_id=trailers.get("delivery", ""))


def _slug(model: str) -> str:
    try:
        return slugify(model)
    except ValueError:
        return ""


# ---------------------------------------------------------------------------------------------
# `mlferry history MODEL [--env E]`


@dataclasses.dataclass(frozen=True)
class ModelHistory:
    model: str
    env: str  # "" for every environment
    repo: str
    branch: str
    head: str
    events: list[FolderEvent]

    def as_json(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(timezone.utc)
        return {"model": self.model, "env": self.env or None, "repo": self.repo, "branch": self.branch,
                "head": self.head, "events": [e.as_json(now) for e in self.events]}

    def table(self, now: datetime | None = None) -> str:
        now = now or datetime.now(timezone.utc)
        where = f"{self.repo} {self.branch}" + (f"@{self.head[:12]}" if self.head else "")
        scope = f"{printable(self.model, 200)} in {self.env}" if self.env else printable(self.model, 200)
        if not self.events:
            return f"no deployments of {scope} in {where}\n"
        header = ["WHEN (UTC)", "AGE", *([] if self.env else ["ENV"]), "EVENT", "VERSION", "TRIGGER", "WORKFLOW",
                  "COMMIT", "AUTHOR"]
        rows = [[e.when.strftime("%Y-%m-%d %H:%M:%S"), age(e.age_seconds(now)), *([] if self.env else [e.env]),
                 e.kind, f"v{e.version}" if e.version else "-", printable(e.trigger) or "-",
                 printable(e.workflow) or "-", e.commit[:12], printable(e.author)] for e in self.events]
        return f"history of {scope} in {where}\n" + format_table(header, rows)


def model_history(model: str, env: str, team: str, remote_url: str, branch: str, *,
                  environ: Mapping[str, str] | None = None) -> ModelHistory:
    """Every change to the model's folder (one environment, or all of them), newest first."""
    path = team_prefix(team) + f"{slugify(model)}/" + (f"{env}/" if env else "")
    with GitOpsHistory.clone(remote_url, branch, environ=environ) as history:
        events = history.events(path)
        head = history.head
    return ModelHistory(model=model, env=env, repo=gitops.display_url(remote_url), branch=branch,
                        head=head, events=events)


# ---------------------------------------------------------------------------------------------
# `mlferry history MODEL --env E --at TIME`: which version served then, and who promoted it

PRESENT, REMOVED, NOT_CREATED = "present", "removed", "not-created"


@dataclasses.dataclass(frozen=True)
class FolderAt:
    """One model's folder in one environment at one instant, from its history (newest first)."""

    history: ModelHistory
    at: datetime
    change: FolderEvent | None  # the newest change at or before `at`: None, the folder did not exist yet
    deploy: FolderEvent | None  # the promotion that wrote the version the folder then held
    next_change: FolderEvent | None  # the first change after `at`

    @classmethod
    def of(cls, history: ModelHistory, at: datetime) -> "FolderAt":
        before = [e for e in history.events if e.when <= at]
        after = [e for e in history.events if e.when > at]
        since_created = itertools.takewhile(lambda e: e.kind != REMOVE, before)
        deploy = next((e for e in since_created if e.kind == DEPLOY), None)
        return cls(history=history, at=at, change=before[0] if before else None, deploy=deploy,
                   next_change=after[-1] if after else None)

    @property
    def state(self) -> str:
        if self.change is None:
            return NOT_CREATED
        return REMOVED if self.change.kind == REMOVE else PRESENT

    @property
    def version(self) -> str:
        return self.deploy.version if self.deploy else ""

    def as_json(self, now: datetime | None = None) -> dict:
        now = now or datetime.now(timezone.utc)
        h = self.history

        def event(e: FolderEvent | None) -> dict | None:
            return e.as_json(now) if e else None

        return {"model": h.model, "env": h.env, "at": self.at.isoformat(), "repo": h.repo, "branch": h.branch,
                "head": h.head, "state": self.state, "version": self.version or None,
                "change": event(self.change), "deploy": event(self.deploy), "next_change": event(self.next_change)}

    def table(self) -> str:
        """The answer for people (named like the other reports' `table`, though it is a list)."""
        h = self.history
        where = f"{h.repo} {h.branch}" + (f"@{h.head[:12]}" if h.head else "")
        lines = [f"{printable(h.model, 200)} in {h.env} at {_utc(self.at)}: {self._answer()}",
                 *self._details(), f"(from {where})"]
        return "\n".join(lines) + "\n"

    def _answer(self) -> str:
        if self.state == REMOVED:
            return "no folder: it had been removed"
        if self.state == NOT_CREATED:
            return "no folder: it did not exist yet" if self.next_change else "no folder: never deployed there"
        return f"v{self.version}" if self.deploy else "a folder mlferry did not write (no promotion commit)"

    def _details(self) -> list[str]:
        if self.state == REMOVED:
            lines = _described("removed", self.change)
        else:
            lines = _described("promoted", self.deploy) if self.deploy else []
            if self.change and self.change is not self.deploy:
                e = self.change
                lines.append(_line("edited", f"{_utc(e.when)} by commit {e.commit[:12]} ({printable(e.author)}): "
                                             f"{printable(e.subject, 80)}"))
        if self.next_change:
            e = self.next_change
            what = f"{e.kind} v{e.version}" if e.version else e.kind
            lines.append(_line("next", f"{_utc(e.when)}: {what}, commit {e.commit[:12]}"))
        return lines


def _described(what: str, event: FolderEvent) -> list[str]:
    """Who did it, how and when: one `name value` line each, empty values left out."""
    fields = [(what, _utc(event.when)), ("commit", f"{event.commit[:12]} {printable(event.subject, 80)}"),
              ("author", printable(event.author, 120)), ("workflow", printable(event.workflow, 120)),
              ("trigger", printable(event.trigger)), ("alias", printable(event.alias)),
              ("delivery", printable(event.delivery_id, 80)), ("training run", printable(event.training_run, 80))]
    return [_line(name, value) for name, value in fields if value]


def _line(name: str, value: str) -> str:
    return f"  {name:<12} {value}"


_UNITS = {**dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
          **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
          **dict.fromkeys(("h", "hour", "hours"), 3600),
          **dict.fromkeys(("d", "day", "days"), 86400),
          **dict.fromkeys(("w", "week", "weeks"), 604800)}
_AGO = re.compile(r"(\d+)\s*([a-z]+)\s+ago", re.IGNORECASE)
TIME_FORMS = ("ISO 8601 (2026-12-04T10:00:00Z, 2026-12-04 10:00, 2026-12-04; UTC unless an offset is given) "
              "or a time ago (30m ago, 2h ago, 3d ago, 1w ago)")


def parse_time(text: str, now: datetime) -> datetime:
    """``text`` as an aware UTC datetime: ISO 8601 (naive means UTC, a date alone its midnight) or
    ``N<unit> ago`` before ``now``; ValueError naming the accepted forms otherwise."""
    ago = _AGO.fullmatch(text.strip())
    try:
        if ago and ago.group(2).lower() in _UNITS:
            return now - timedelta(seconds=int(ago.group(1)) * _UNITS[ago.group(2).lower()])
        when = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise ValueError(f"--at {text!r} is not a time: use {TIME_FORMS}") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------------------------------------
# Text for people (shared with `mlferry status`)


def age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


"""What happened to GitOps folders, read back from git: `mlferry history` and the last-commit
column of `mlferry status`.

MLflow keeps no history of its aliases; the GitOps repo does. Every promotion commit carries
the trailers `Model:`, `Version:`, `Environment:`, `Run-Id:` and `Trigger:` (see
:mod:`steps.commit`), a removal commit at least `Trigger:`, so one `git log` over a folder (or
over the whole team) with the changed paths and the trailers is the deployment history.

Cost: one partial clone (`--filter=blob:none`: commits and trees, no file contents) and one
`git log`, streamed, so a caller that only needs the latest change of each folder stops
reading as soon as it has them. A shallow clone would have no history; a blobless one has all
of it for the price of the commits and trees. Credentials come from
:func:`steps.gitops.remote_for`, exactly as for publishing, and never reach argv or disk.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Collection, Iterator, Mapping, Sequence

from mlferry.steps import gitops
from mlferry.steps.trailers import parse_trailer_value
from mlferry.steps.layout import parse_gitops_folder
from mlferry.steps.naming import slugify

GIT_TIMEOUT = gitops.GIT_TIMEOUT
_RECORD, _FIELD = "\x1e", "\x1f"
_FORMAT = _RECORD + _FIELD.join(["%H", "%cI", "%an", "%ae", "%s", "%(trailers:only,unfold)"]) + _FIELD

DEPLOY, REMOVE, EDIT = "deploy", "remove", "edit"


class HistoryError(RuntimeError):
    """Reading the GitOps history failed; the message is one line saying what to do."""


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
    run_id: str
    commit: str
    when: datetime
    author: str
    subject: str
    model: str = ""  # from the Model trailer, when it names this folder's model

    @property
    def env(self) -> str:
        return self.folder.rsplit("/", 1)[-1]

    def age_seconds(self, now: datetime) -> int:
        return max(0, int((now - self.when).total_seconds()))

    def as_json(self, now: datetime) -> dict:
        return {"folder": self.folder, "env": self.env, "kind": self.kind, "model": self.model,
                "version": self.version, "trigger": self.trigger, "run_id": self.run_id,
                "commit": self.commit, "when": self.when.isoformat(), "age_seconds": self.age_seconds(now),
                "author": self.author, "subject": self.subject}


@dataclasses.dataclass(frozen=True)
class _Commit:
    sha: str
    when: datetime
    author: str
    subject: str
    trailers: dict[str, str]
    changes: dict[str, list[str]]  # folder → git status letters of its changed files


class GitOpsHistory:
    """A blobless clone of one branch of the GitOps remote, for reading its log.

    Use as a context manager: ``with GitOpsHistory.clone(url, branch) as history: ...``.
    """

    def __init__(self, root: Path, remote: gitops.Remote, env: Mapping[str, str], head: str):
        self.root, self.remote, self.env, self.head = root, remote, env, head

    @classmethod
    def clone(cls, remote_url: str, branch: str, *, environ: Mapping[str, str] | None = None) -> "_Cloned":
        return _Cloned(remote_url, branch, os.environ if environ is None else environ)

    def events(self, path: str, *, rev: str = "", until_seen: Collection[str] | None = None) -> list[FolderEvent]:
        """Every change to the folders under ``path``, newest first (one `git log`).

        ``rev`` starts the log at that commit instead of the head (when the clone has it).
        ``until_seen`` stops the reading once each of those folders has its latest change:
        what `mlferry status` needs, without reading the rest of the history.
        """
        if not self.head:
            return []
        start = rev if rev and self._has(rev) else self.head
        found: list[FolderEvent] = []
        maybe_removed: list[int] = []
        unseen = set(until_seen) if until_seen is not None else None
        for commit in self._log(start, path):
            for folder, statuses in sorted(commit.changes.items()):
                if all(s == "D" for s in statuses):
                    maybe_removed.append(len(found))
                found.append(_event(commit, folder))
                if unseen is not None:
                    unseen.discard(folder)
            if unseen is not None and not unseen:
                break
        # A commit that deleted every file it touched in a folder may still have left other
        # files there: ask git, in one call, which folders were really gone after the commit.
        gone = self._missing([f"{found[i].commit}:{found[i].folder}" for i in maybe_removed])
        for index, missing in zip(maybe_removed, gone):
            if missing:
                found[index] = dataclasses.replace(found[index], kind=REMOVE)
        return found

    def _log(self, start: str, path: str) -> Iterator[_Commit]:
        args = ["log", "-z", "--no-renames", "--name-status", f"--format={_FORMAT}", start, "--", path]
        proc = subprocess.Popen(["git", *args], cwd=self.root, env=dict(self.env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for record in _records(proc.stdout):
                yield _parse_commit(record)
        finally:  # also when the caller had enough and stopped reading: then end git here
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise self._error("read the log", err.decode(errors="replace"))

    def _has(self, rev: str) -> bool:
        return subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=self.root, env=dict(self.env),
                              capture_output=True, timeout=GIT_TIMEOUT).returncode == 0

    def _missing(self, objects: Sequence[str]) -> list[bool]:
        if not objects:
            return []
        done = subprocess.run(["git", "cat-file", "--batch-check"], cwd=self.root, env=dict(self.env),
                              input="".join(f"{o}\n" for o in objects).encode(), capture_output=True,
                              timeout=GIT_TIMEOUT)
        if done.returncode != 0:
            raise self._error("inspect removed folders", done.stderr.decode(errors="replace"))
        return [line.endswith(" missing") for line in done.stdout.decode().splitlines()]

    def _error(self, action: str, stderr: str) -> HistoryError:
        reason = _reason(stderr, self.remote)
        return HistoryError(f"GitOps remote {self.remote.display}: could not {action} ({reason})")


class _Cloned:
    """The context manager behind :meth:`GitOpsHistory.clone`: the clone lives in a temp dir."""

    def __init__(self, remote_url: str, branch: str, environ: Mapping[str, str]):
        self.remote_url, self.branch, self.environ = remote_url, gitops.check_branch(branch), environ
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> GitOpsHistory:
        self._tmp = tempfile.TemporaryDirectory(prefix="mlferry-history-")
        try:
            return _clone(self.remote_url, self.branch, self.environ, Path(self._tmp.name))
        except BaseException:
            self._tmp.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        if self._tmp:
            self._tmp.cleanup()


def _clone(remote_url: str, branch: str, environ: Mapping[str, str], scratch: Path) -> GitOpsHistory:
    remote = gitops.remote_for(remote_url, environ, scratch)
    env = gitops.git_environment(remote, environ)
    root = scratch / "history.git"
    try:
        done = subprocess.run(
            ["git", "clone", "--quiet", "--bare", "--filter=blob:none", "--single-branch", "--branch", branch,
             "--no-tags", remote.url, str(root)],
            cwd=scratch, env=env, capture_output=True, timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HistoryError(f"GitOps remote {remote.display}: cloning timed out after {GIT_TIMEOUT:.0f}s; "
                           "check that the git server is reachable from here") from None
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        if f"remote branch {branch} not found" in stderr.lower():
            return GitOpsHistory(root, remote, env, head="")  # nothing was ever committed there
        raise HistoryError(f"GitOps remote {remote.display}: could not clone branch {branch} "
                           f"({_reason(stderr, remote)}); {_hint(stderr)}")
    head = subprocess.run(["git", "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=GIT_TIMEOUT).stdout.strip()
    return GitOpsHistory(root, remote, env, head)


def _reason(stderr: str, remote: gitops.Remote) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.startswith(("hint:", "warning: filtering not recognized"))]
    fatal = [ln for ln in lines if ln.lower().startswith(("fatal:", "error:"))]
    reason = (fatal or lines or ["git gave no reason"])[0]
    for secret in remote.secrets:
        reason = reason.replace(secret, "***")
    return reason


def _hint(stderr: str) -> str:
    text = stderr.lower()
    if any(s in text for s in ("authentication", "permission denied", "could not read username",
                               "terminal prompts disabled", "403", "401")):
        return "set MLFERRY_GIT_TOKEN (https) or MLFERRY_GIT_SSH_KEY (ssh) to a credential that may read the repo"
    if any(s in text for s in ("not found", "does not appear to be a git repository", "no such file")):
        return "check MLFERRY_GITOPS_REPO"
    return "check MLFERRY_GITOPS_REPO and that the git server is reachable from here"


def _records(stream) -> Iterator[str]:
    """The log's commits, one text record each, as git writes them."""
    buffer = ""
    while chunk := stream.read1(65536):
        buffer += chunk.decode("utf-8", errors="replace")
        *complete, buffer = buffer.split(_RECORD)
        yield from (r for r in complete if r)
    if buffer:
        yield buffer


def _parse_commit(record: str) -> _Commit:
    sha, when, name, email, subject, trailers, paths = record.split(_FIELD, 6)
    changes: dict[str, list[str]] = {}
    fields = paths.lstrip("\0\n").split("\0")
    for status, path in zip(fields[::2], fields[1::2]):
        folder = path.rsplit("/", 1)[0]
        if _is_folder(folder):
            changes.setdefault(folder, []).append(status[:1])
    return _Commit(sha=sha, when=datetime.fromisoformat(when).astimezone(timezone.utc),
                   author=f"{name} <{email}>", subject=subject, trailers=_trailers(trailers), changes=changes)


def _trailers(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            try:
                found[key.strip().lower()] = parse_trailer_value(value.strip())
            except ValueError:  # a hand-written trailer that merely starts with a quote
                found[key.strip().lower()] = value.strip()
    return found


def _is_folder(folder: str) -> bool:
    try:
        parse_gitops_folder(folder)
    except ValueError:
        return False
    return True


def _event(commit: _Commit, folder: str) -> FolderEvent:
    trailers = commit.trailers
    _, slug, env = parse_gitops_folder(folder)
    model = trailers.get("model", "")
    ours = bool(model) and trailers.get("environment") == env and _slug(model) == slug
    kind = DEPLOY if ours and trailers.get("version") else EDIT  # REMOVE: decided by the caller
    return FolderEvent(folder=folder, kind=kind, version=trailers.get("version", "") if ours else "",
                       trigger=trailers.get("trigger", ""), run_id=trailers.get("run-id", "") if ours else "",
                       commit=commit.sha, when=commit.when, author=commit.author, subject=commit.subject,
                       model=model if ours else "")


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
        header = ["WHEN (UTC)", "AGE", *([] if self.env else ["ENV"]), "EVENT", "VERSION", "TRIGGER", "RUN",
                  "COMMIT", "AUTHOR"]
        rows = [[e.when.strftime("%Y-%m-%d %H:%M:%S"), age(e.age_seconds(now)), *([] if self.env else [e.env]),
                 e.kind, f"v{e.version}" if e.version else "-", printable(e.trigger) or "-",
                 printable(e.run_id) or "-", e.commit[:12], printable(e.author)] for e in self.events]
        return f"history of {scope} in {where}\n" + format_table(header, rows)


def model_history(model: str, env: str, team: str, remote_url: str, branch: str, *,
                  environ: Mapping[str, str] | None = None) -> ModelHistory:
    """Every change to the model's folder (one environment, or all of them), newest first."""
    path = f"teams/{team}/{slugify(model)}/" + (f"{env}/" if env else "")
    with GitOpsHistory.clone(remote_url, branch, environ=environ) as history:
        events = history.events(path)
        head = history.head
    return ModelHistory(model=model, env=env, repo=gitops.display_url(remote_url), branch=branch,
                        head=head, events=events)


# ---------------------------------------------------------------------------------------------
# Text for people (shared with `mlferry status`)


def age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def printable(text: str, limit: int = 48) -> str:
    flat = "".join(c if c.isprintable() else "?" for c in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, *rows]]
    return "\n".join(lines) + "\n"

"""Reading a branch's history: its commits, the paths each changed, and their trailers.

Cost: one partial clone (``--filter=blob:none``: commits and trees, no file contents) and one
``git log``, streamed, so a caller that only needs the latest change of each folder stops
reading as soon as it has them. A shallow clone would have no history; a blobless one has all
of it for the price of the commits and trees. Credentials reach git exactly as for publishing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mlferry.steps.gitops.credentials import check_branch, remote_for
from mlferry.steps.gitops.errors import BranchMissing
from mlferry.steps.gitops.runner import Git
from mlferry.steps.trailers import parse_trailer_value

_RECORD, _FIELD = "\x1e", "\x1f"
_FORMAT = _RECORD + _FIELD.join(["%H", "%cI", "%an", "%ae", "%s", "%(trailers:only,unfold)"]) + _FIELD


@dataclasses.dataclass(frozen=True)
class Commit:
    sha: str
    when: datetime
    author: str  # "name <email>"
    subject: str
    trailers: dict[str, str]  # lower-case key → value
    changes: list[tuple[str, str]]  # (git status letter, path) of each changed file


class History:
    """A blobless clone of one branch, for reading its log; ``head`` is "" for a missing branch."""

    def __init__(self, git: Git, head: str):
        self.git, self.head = git, head

    def commits(self, start: str, path: str) -> Iterator[Commit]:
        """The commits from ``start`` that changed anything under ``path``, newest first."""
        chunks = self.git.stream("log", "-z", "--no-renames", "--name-status", f"--format={_FORMAT}", start,
                                 "--", path, action="read the log")
        with contextlib.closing(chunks):  # a caller that stops reading ends git at once
            for record in _records(chunks):
                yield _parse_commit(record)

    def has(self, rev: str) -> bool:
        return self.git.succeeds("cat-file", "-e", f"{rev}^{{commit}}")

    def missing(self, objects: Sequence[str]) -> list[bool]:
        """For each ``<commit>:<path>``, whether nothing is there."""
        if not objects:
            return []
        out = self.git.run("cat-file", "--batch-check", stdin="".join(f"{o}\n" for o in objects).encode(),
                           action="inspect removed folders")
        return [line.endswith(" missing") for line in out.splitlines()]


@contextlib.contextmanager
def clone_history(remote_url: str, branch: str, *, environ: Mapping[str, str] | None = None) -> Iterator[History]:
    """The branch's history in a temporary clone, removed on leaving the block."""
    environ = os.environ if environ is None else environ
    check_branch(branch)
    with tempfile.TemporaryDirectory(prefix="mlferry-history-") as tmp:
        scratch = Path(tmp)
        remote = remote_for(remote_url, environ, scratch)
        git = Git(scratch / "history.git", environ, remote)
        try:
            git.run("clone", "--quiet", "--bare", "--filter=blob:none", "--single-branch", "--branch", branch,
                    "--no-tags", remote.url, str(git.root), action=f"clone branch {branch}", cwd=scratch)
        except BranchMissing:
            head = ""  # nothing was ever committed there
        else:  # exit code 128: no such commit, which reads as an empty history too
            head = git.run("rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}", action="read the head",
                           ok_codes=(0, 128))
        yield History(git, head)


def _records(chunks: Iterator[bytes]) -> Iterator[str]:
    """The log's commits, one text record each, as git writes them."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        *complete, buffer = buffer.split(_RECORD)
        yield from (r for r in complete if r)
    if buffer:
        yield buffer


def _parse_commit(record: str) -> Commit:
    sha, when, name, email, subject, trailers, paths = record.split(_FIELD, 6)
    fields = paths.lstrip("\0\n").split("\0")
    changes = [(status[:1], path) for status, path in zip(fields[::2], fields[1::2])]
    return Commit(sha=sha, when=datetime.fromisoformat(when).astimezone(timezone.utc),
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

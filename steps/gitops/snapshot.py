"""Reading what a branch holds under a prefix (``teams/<team>/``), for reconcile and status."""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Mapping

from mlferry.steps.gitops.clone import read_objects, remote_head_of, sync
from mlferry.steps.gitops.credentials import check_branch, remote_for
from mlferry.steps.gitops.runner import Git


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The files under a prefix at the head of a branch (read-only; for reconcile and status)."""

    sha: str  # "" when the branch does not exist yet
    files: Mapping[str, str]  # path → text

    def folders(self, depth: int) -> dict[str, dict[str, str]]:
        """Files grouped by their first ``depth`` path segments (teams/<team>/<slug>/<env>: 4)."""
        grouped: dict[str, dict[str, str]] = collections.defaultdict(dict)
        for path, text in self.files.items():
            parts = path.split("/")
            if len(parts) == depth + 1:
                grouped["/".join(parts[:depth])][parts[-1]] = text
        return dict(grouped)


def read_snapshot(remote_url: str, branch: str, prefix: str, *,
                  environ: Mapping[str, str] | None = None) -> Snapshot:
    """One shallow fetch, then every file under ``prefix`` read in a single cat-file call.

    Not blobless: the prefix is a team's folders, which in the team's own GitOps repo is nearly
    every file, so a blobless clone would only add a second request for nearly all of them.
    """
    environ = os.environ if environ is None else environ
    check_branch(branch)
    with tempfile.TemporaryDirectory(prefix="mlferry-gitops-") as tmp:
        scratch = Path(tmp)
        git = Git(scratch / "clone", environ, remote_for(remote_url, environ, scratch))
        head = sync(git, branch, scratch)
        if not head:
            return Snapshot(sha="", files={})
        listing = git.run("ls-tree", "-r", "-z", "--full-tree", head, "--", prefix, action="list files")
        entries = [line.split("\t", 1) for line in listing.split("\0") if "\t" in line]
        blobs = [(path, meta.split()[2]) for meta, path in entries if meta.split()[1] == "blob"]
        contents = read_objects(git, [sha for _, sha in blobs])
        return Snapshot(sha=head, files={path: (contents[sha] or b"").decode("utf-8", errors="replace")
                                         for path, sha in blobs})


def remote_head(remote_url: str, branch: str, *, environ: Mapping[str, str] | None = None) -> str:
    """The branch's head sha on the remote, "" when it does not exist yet: one `git ls-remote`, no
    clone, so that a follower (the local applier) can ask every second and clone only on a change."""
    environ = os.environ if environ is None else environ
    check_branch(branch)
    with tempfile.TemporaryDirectory(prefix="mlferry-gitops-") as tmp:
        scratch = Path(tmp)
        git = Git(scratch / "clone", environ, remote_for(remote_url, environ, scratch))
        return remote_head_of(git, branch, scratch)

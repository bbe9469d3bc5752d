"""A shallow clone of one branch's head: what publishing and snapshot reading both start from.

The clone holds only the head commit, and with ``filters`` only what the caller asks for
(publishing: the trees above its folders). What a filtered clone leaves out must never be
fetched behind our back, so once cloned it stops being a "promisor" of the remote: git then
fails loudly instead of fetching lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from mlferry.steps.gitops.errors import FILTER_REFUSED, BranchMissing, GitOpsError, InvalidSetting, matching_line
from mlferry.steps.gitops.runner import Git

logger = logging.getLogger(__name__)


def sync(git: Git, branch: str, scratch: Path, filters: tuple[str, ...] = (), create: bool = True) -> str:
    """Bring the remote head of ``branch`` into the clone; its sha, or "" if the branch is new.

    ``filters``: partial-clone filters, best first; the first one the server serves is used
    (none: everything at the head). ``scratch``: where git runs before the clone exists.
    ``create``: whether an empty remote may get ``branch`` (a first commit); else it is an error.
    """
    head = remote_head_of(git, branch, scratch, create)
    if not head:
        logger.info("%s is empty: branch %s starts with the first commit to it", git.display, branch)
    if not (git.root / ".git").exists():
        _start_clone(git, branch, head, filters)
    elif head:
        logger.info("fetching %s %s", git.display, branch)
        _first_served(git, filters, lambda spec: git.run_with_progress(
            "fetch", "--progress", "--depth", "1", *spec, "--no-tags", "--no-auto-maintenance", "origin",
            f"+refs/heads/{branch}:refs/remotes/origin/{branch}", action="fetch"))
    if filters:
        _no_lazy_fetch(git)
    if not head:
        return ""
    return git.run("rev-parse", "--verify", f"refs/remotes/origin/{branch}^{{commit}}", action="read the head")


def _first_served(git: Git, filters: tuple[str, ...], transfer: Callable[[list[str]], str]) -> str:
    """``transfer`` with the first filter the server serves (git says so at once if it does not)."""
    for index, spec in enumerate(filters):
        try:
            return transfer([spec])
        except GitOpsError as failed:
            if index == len(filters) - 1 or not matching_line(failed.stderr, FILTER_REFUSED):
                raise
            logger.info("%s does not serve %s (%s): trying %s", git.display, spec.removeprefix("--filter="),
                        matching_line(failed.stderr, FILTER_REFUSED), filters[index + 1].removeprefix("--filter="))
    return transfer([])


def _no_lazy_fetch(git: Git) -> None:
    """Make a missing object an error in this clone, not a silent fetch from the remote.

    A filtered clone registers the remote as its "promisor", and git then fetches whatever it
    lacks one object at a time: pack-objects would, in ``git push``, for the old trees beside
    our folder (it only walks them to avoid sending them). Nothing we do needs them.
    """
    for key in ("remote.origin.promisor", "remote.origin.partialclonefilter"):
        git.run("config", "--unset-all", key, action="configure the clone", ok_codes=(0, 5))  # 5: not set


def remote_head_of(git: Git, branch: str, scratch: Path, create: bool = True) -> str:
    """The remote's head of ``branch``, "" when the remote is empty (an error if it has other
    branches, or if it is empty and ``create`` is off). A lookup: it logs nothing (the local
    applier asks every second)."""
    out = git.run("ls-remote", "--heads", git.remote.url, action="list branches", cwd=scratch)
    heads = {ref: sha for sha, ref in (line.split("\t", 1) for line in out.splitlines() if "\t" in line)}
    head = heads.get(f"refs/heads/{branch}", "")
    if not head and heads:
        # A misconfigured branch name, most likely. Creating it would start a history holding only
        # mlferry's folders beside the team's real one (an orphan Argo CD might be pointed at), and
        # reading it would report nothing deployed: neither is evidence of anything.
        others = ", ".join(sorted(h.removeprefix("refs/heads/") for h in heads))
        raise BranchMissing(f"branch {branch!r} does not exist on {git.display}, which has {others}: set "
                            "gitops_branch (MLFERRY_GITOPS_BRANCH, --gitops-branch) to the branch Argo CD follows, "
                            f"or create {branch!r} there from it")
    if not head and not create:
        raise BranchMissing(f"{git.display} is empty: branch {branch!r} does not exist; push a first commit to it, "
                            "or let mlferry create it (gitops_create_branch: true, MLFERRY_GITOPS_CREATE_BRANCH=true)")
    return head


def _start_clone(git: Git, branch: str, head: str, filters: tuple[str, ...]) -> None:
    parent = git.root.parent
    parent.mkdir(parents=True, exist_ok=True)
    if git.root.exists() and any(git.root.iterdir()):
        raise InvalidSetting(f"work directory {git.root} is not empty")
    if head:
        logger.info("cloning %s %s (shallow%s)", git.display, branch, ", filtered" * bool(filters))
        _first_served(git, filters, lambda spec: git.run_with_progress(
            "clone", "--progress", "--depth", "1", *spec, "--branch", branch, "--single-branch", "--no-tags",
            "--no-checkout", git.remote.url, str(git.root), action="clone", cwd=parent))
    else:
        git.root.mkdir(exist_ok=True)
        git.run("init", "--quiet", action="create a clone")
        git.run("remote", "add", "origin", git.remote.url, action="create a clone")


def read_objects(git: Git, names: list[str]) -> dict[str, bytes | None]:
    """The content of each object (any name git understands) in one cat-file call; None if absent."""
    if not names:
        return {}
    out = git.run_raw("cat-file", "--batch", stdin="".join(f"{n}\n" for n in names).encode(), action="read files")
    pos, contents = 0, {}
    for name in names:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        if header[-1] == b"missing":
            contents[name], pos = None, header_end + 1
            continue
        start, size = header_end + 1, int(header[2])
        contents[name] = out[start:start + size]
        pos = start + size + 1
    return contents

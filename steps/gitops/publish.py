"""Publishing: make folders on a branch of the remote hold exactly the given files.

mlferry owns ``teams/<team>/<slug>/<env>/`` folders and writes nothing else, so publishing is
"make this folder hold exactly these files on the remote branch", not "merge my edits".
That ownership drives the whole design of :func:`publish_folder`:

- Each attempt builds the new commit with one ``git fast-import`` on top of the remote head:
  delete each folder, add our files, commit. fast-import reads only the trees along the
  folders' paths, so nothing outside the folders is ever touched, no working tree or index is
  built, and no hook, filter, ``.gitignore`` or signing setting of the repo or the user can
  change what gets committed.
- Building that commit needs the trees down to each folder's parent, never the files beside
  it, nor the folder's old content. So the clone is shallow and filtered to exactly that
  (``--depth 1 --filter=combine:tree:<depth>+blob:none``): its cost follows the number of
  folders above ours, not the size of the repo or its history. A server that does not serve
  deep tree filters (GitHub has said it serves only ``tree:0``) gets the next best,
  ``blob:none`` (every tree, no file); one that refuses filters altogether
  (``uploadpack.allowFilter`` unset) gets an ordinary shallow clone, with a line in the log
  saying how to make it faster. The push sends no deltas against old files the clone does not
  have (``--no-thin``).
- When the push is rejected because the remote moved (another promotion, a human commit), we
  do not rebase our commit textually: a rebase can conflict, and would replay a diff computed
  against a head that no longer matters. We fetch the new head and re-apply the folder
  replacement on it (in effect: reset to the new head, replace the folder again). The result
  is the same as if we had started after the other writer, which is exactly what "mlferry owns
  the folder" means. If the new head already holds our content (a concurrent run promoted the
  same version), there is nothing to commit and we report that head: the step is idempotent.
- Transient failures (:class:`RemoteUnreachable`, :class:`RemoteMoved`) are retried a bounded
  number of times with exponential backoff and jitter, so writers that collide spread out
  instead of colliding again in lock step. Every other failure stops at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

from mlferry.steps.gitops.clone import read_objects, sync
from mlferry.steps.gitops.credentials import Identity, check_branch, identity_from, remote_for
from mlferry.steps.gitops.errors import (
    BUSY_HINT, UNREACHABLE_HINT, CommandFailed, GitOpsError, GitOpsUnavailable, NotAFolder, PushRejected, RemoteMoved,
    RemoteUnreachable,
)
from mlferry.steps.gitops.runner import Git

logger = logging.getLogger(__name__)

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
BLOBLESS = "--filter=blob:none"  # commits and trees only: no file contents
PUBLISH_REF = "refs/mlferry/publish"  # where fast-import leaves the commit it builds, in our clone only


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so colliding writers spread out."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class FolderChange:
    """Make each folder hold exactly its files (name → content); no files: delete the folder.

    Usually one folder (a promotion); several when a reconcile prunes in one commit.
    """

    folders: Mapping[str, Mapping[str, str]]
    message: str

    @classmethod
    def single(cls, folder: str, files: Mapping[str, str], message: str) -> "FolderChange":
        return cls(folders={folder: files}, message=message)

    @property
    def label(self) -> str:
        return ", ".join(sorted(self.folders))


@dataclasses.dataclass(frozen=True)
class Published:
    sha: str  # the branch head after publishing; "" when the branch still does not exist
    changed: bool
    stopped: str = ""  # why `check` kept this change out (nothing was committed), else ""


# Called on every attempt with the head it builds on and what each folder of the change holds there
# (folder → {file name: text}, {} when absent); returns "" to go ahead, or why not (nothing is
# pushed); may raise to refuse. The commit step checks the folder's owner and hold with it.
FolderCheck = Callable[[str, Mapping[str, Mapping[str, str]]], str]


def publish_folder(
    remote_url: str,
    branch: str,
    change: FolderChange,
    *,
    workdir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    before_push: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    create_branch: bool = True,
    check: FolderCheck | None = None,
) -> Published:
    """Make each folder of ``change`` on ``branch`` of the remote hold exactly its files.

    Idempotent: when the branch head already holds that content, nothing is committed and the
    head is reported with ``changed=False``. ``workdir`` (empty or missing) keeps the clone for
    inspection; by default a temporary directory is used and removed. ``before_push`` runs just
    before every push (tests use it to make another writer win the race). ``create_branch``: an
    empty remote gets the branch (the steps pass the team's explicit `gitops_create_branch`).
    ``check`` (see FolderCheck) reads the folders as they are at the head each attempt builds on,
    from the same clone: their files are fetched into it (its filter leaves them out), so asking
    who owns a folder costs no clone of its own.
    """
    environ = os.environ if environ is None else environ
    check_branch(branch)
    identity = identity_from(environ)
    with tempfile.TemporaryDirectory(prefix="mlferry-gitops-") as tmp:
        scratch = Path(tmp)
        remote = remote_for(remote_url, environ, scratch)
        root = Path(workdir) if workdir is not None else scratch / "clone"
        git = Git(root, environ, remote)
        return _with_retries(git, scratch, branch, change, identity, retry, before_push, sleep,
                             _deadline(environ), create_branch, check)


def _deadline(environ: Mapping[str, str]) -> float | None:
    """MLFERRY_CONNECT_DEADLINE (seconds, set by local runs): no retry starts past it."""
    try:
        seconds = float(environ.get("MLFERRY_CONNECT_DEADLINE") or "")
    except ValueError:
        return None
    return time.monotonic() + seconds


def _with_retries(git: Git, scratch: Path, branch: str, change: FolderChange, identity: Identity,
                  retry: RetryPolicy, before_push: Callable[[], None] | None,
                  sleep: Callable[[float], None], deadline: float | None = None,
                  create_branch: bool = True, check: FolderCheck | None = None) -> Published:
    last: GitOpsError = RemoteUnreachable("no attempt made", hint=UNREACHABLE_HINT)
    attempt = 0
    for attempt in range(1, retry.attempts + 1):
        try:
            return _attempt(git, scratch, branch, change, identity, before_push, create_branch, check)
        except (RemoteUnreachable, RemoteMoved) as error:
            last = error
        if attempt >= retry.attempts:
            break
        delay = retry.delay(attempt)
        if deadline is not None and time.monotonic() + delay > deadline:
            break
        logger.warning("%s: attempt %d/%d: %s; retrying in %.1fs",
                       git.display, attempt, retry.attempts, last.reason, delay)
        sleep(delay)
    raise GitOpsUnavailable(f"GitOps remote {git.display}: gave up after {attempt} "
                            f"attempt{'s' if attempt != 1 else ''}; last error: {last.reason}; {last.hint}")


def _attempt(git: Git, scratch: Path, branch: str, change: FolderChange, identity: Identity,
             before_push: Callable[[], None] | None, create_branch: bool = True,
             check: FolderCheck | None = None) -> Published:
    """One try: on the current remote head, replace the folder, commit, push.

    A retry after a rejected push comes back here and starts from the new head: the folder
    replacement is re-applied, never rebased (see the module docstring for why), and ``check``
    asked again about what that head holds.
    """
    base = sync(git, branch, scratch, filters=(trees_above(change), BLOBLESS), create=create_branch)
    _check_parents(git, base, sorted(change.folders))
    if check is not None:
        stopped = check(base, {folder: folder_files(git, base, folder) for folder in sorted(change.folders)})
        if stopped:
            return Published(sha=base, changed=False, stopped=stopped)
    sha, tree, base_tree = _write_commit(git, base, change, identity)
    if tree == base_tree:
        logger.info("%s already holds this content on %s at %s: nothing to commit", change.label, branch, base)
        return Published(sha=base, changed=False)
    if before_push:
        before_push()
    _push(git, sha, branch)
    logger.info("pushed %s to %s %s (%s)", sha[:12], git.display, branch, change.label)
    return Published(sha=sha, changed=True)


def trees_above(change: FolderChange) -> str:
    """The filter that fetches every tree down to each folder's parent, and no file.

    A folder's own old tree is not needed (it is replaced whole), nor anything beside the path.
    """
    depth = max(folder.count("/") + 1 for folder in change.folders)  # teams/ml/demo/staging: 4
    return f"--filter=combine:tree:{depth}+blob:none"


def _write_commit(git: Git, base: str, change: FolderChange, identity: Identity) -> tuple[str, str, str]:
    """Commit ``change`` on ``base`` with fast-import: (commit, its tree, base's tree)."""
    script = fast_import_script(change, identity, base, PUBLISH_REF)
    # --force: the ref is ours and left over from an earlier attempt on another head.
    git.run("fast-import", "--quiet", "--done", "--force", "--date-format=now", stdin=script, action="build the commit")
    base_tree = [f"{base}^{{tree}}"] if base else []
    sha, tree, *before = git.run("rev-parse", PUBLISH_REF, f"{PUBLISH_REF}^{{tree}}", *base_tree,
                                 action="read the commit").split()
    return sha, tree, before[0] if before else EMPTY_TREE


def fast_import_script(change: FolderChange, identity: Identity, base: str, ref: str) -> bytes:
    """The fast-import stream that commits ``change`` on ``base`` ("" for a first commit) to ``ref``.

    Each folder is deleted, then its files added: the folder ends up holding exactly them, and a
    folder left empty disappears with any parent it leaves empty, as with ``git rm``.
    """
    who = f"{identity.name} <{identity.email}> now"
    lines = [b"reset " + ref.encode(), b"commit " + ref.encode(), f"author {who}".encode(),
             f"committer {who}".encode(), *_data(change.message.encode("utf-8"))]
    if base:
        lines.append(f"from {base}".encode())
    for folder, files in sorted(change.folders.items()):
        lines.append(b"D " + _quoted(folder))
        for name, content in sorted(files.items()):
            lines += [b"M 100644 inline " + _quoted(f"{folder}/{name}"), *_data(content.encode("utf-8"))]
    return b"\n".join([*lines, b"", b"done", b""])


def _data(payload: bytes) -> list[bytes]:
    return [b"data %d" % len(payload), payload]


def _quoted(path: str) -> bytes:
    """A path as fast-import reads it, C-style quoted, so any character in it is taken literally."""
    escaped = "".join({"\\": "\\\\", '"': '\\"', "\n": "\\n"}.get(c, c) for c in path)
    return f'"{escaped}"'.encode("utf-8")


def _check_parents(git: Git, base: str, folders: list[str]) -> None:
    """Refuse a file or symlink where a parent folder of one of ``folders`` should be.

    fast-import would silently replace it with a folder, deleting a file mlferry does not own.
    The check reads the entries of the trees above (the clone has them), never the files.
    """
    if not base:
        return  # a new branch: nothing there yet
    paths = {folder: folder.split("/") for folder in folders}
    containers = {folder: [f"{base}^{{tree}}"] + [f"{base}:{'/'.join(parts[:i])}" for i in range(1, len(parts) - 1)]
                  for folder, parts in paths.items()}
    trees = read_objects(git, sorted({name for names in containers.values() for name in names}))
    for folder, parts in paths.items():
        for depth, container in enumerate(containers[folder]):
            mode = tree_entries(trees[container] or b"").get(parts[depth])
            if mode is None:
                break  # the rest of the path does not exist yet: fast-import creates it
            if mode != "40000":
                kind = {"120000": "symlink", "160000": "submodule"}.get(mode, "blob")
                raise NotAFolder(f"{git.display}: {'/'.join(parts[:depth + 1])} is a {kind}, not a folder; "
                                 f"mlferry needs it to be a folder to write {folder}")


def folder_files(git: Git, base: str, folder: str) -> dict[str, str]:
    """The files directly in ``folder`` at ``base`` (name → text); {} when it is not there.

    The clone's filter stops at the folder's parent, whose tree names the folder's tree: that one
    object is fetched with everything under it (a few small files), by id, as a partial clone
    fetches what it lacks (servers that serve filters serve this too). A clone that has it all
    (a server without filters) fetches nothing.
    """
    if not base:
        return {}
    entry = git.run("ls-tree", "-z", base, "--", folder, action="find the folder")  # reads the trees above only
    meta, _, _ = entry.partition("\t")
    if meta.split()[1:2] != ["tree"]:
        return {}  # not there (or not a folder: the commit replaces it all the same)
    tree = meta.split()[2]
    files = _files_in(git, tree) if git.succeeds("cat-file", "-e", tree) else None
    if files is None or None in files.values():  # the tree, or its files (a blobless clone), are not here
        git.run("-c", "fetch.negotiationAlgorithm=noop", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                "--recurse-submodules=no", "origin", tree, action="fetch the folder")
        files = _files_in(git, tree)
        if None in files.values():
            raise CommandFailed(f"{git.display} did not send the files of {folder}: mlferry cannot tell whose it is")
    return {path: content.decode("utf-8", errors="replace") for path, content in files.items()}


def _files_in(git: Git, tree: str) -> dict[str, bytes | None]:
    """The files directly in a tree (name → content; None: not in the clone)."""
    listing = git.run("ls-tree", "-z", tree, action="list the folder")
    blobs = [(path, meta.split()[2]) for meta, path in (line.split("\t", 1) for line in listing.split("\0") if "\t" in line)
             if meta.split()[1] == "blob"]
    contents = read_objects(git, [sha for _, sha in blobs])
    return {path: contents[sha] for path, sha in blobs}


def tree_entries(raw: bytes) -> dict[str, str]:
    """A tree object's entries, name → mode ("40000" for a folder); binary format
    ``<mode> <name>\\0<20-byte id>`` repeated."""
    entries, pos = {}, 0
    while pos < len(raw):
        space, nul = raw.index(b" ", pos), raw.index(b"\0", pos)
        entries[raw[space + 1:nul].decode("utf-8", errors="surrogateescape")] = raw[pos:space].decode()
        pos = nul + 21
    return entries


def _push(git: Git, sha: str, branch: str) -> None:
    ref = f"refs/heads/{branch}"
    try:
        # --no-thin: a thin pack deltas our files against the folder's old ones, which a
        # blobless clone would first fetch; rendered manifests are small, deltas save nothing.
        git.run("push", "--porcelain", "--no-thin", "origin", f"{sha}:{ref}", action="push")
    except GitOpsError as failed:
        flag, summary = _push_status(failed.stdout, ref)
        if flag != "!":  # no verdict on our ref: git failed before that (auth, network…)
            raise
        if summary.startswith("[rejected]") or any(s in summary for s in ("failed to update ref", "lock")):
            reason = f"branch {branch} moved while we pushed ({summary})"
            raise RemoteMoved(f"GitOps remote {git.display}: {reason}; {BUSY_HINT}", reason=reason,
                              hint=BUSY_HINT) from None
        raise PushRejected(f"GitOps remote {git.display} refused the push to {branch}: {summary}; "
                           "check branch protection and that the credential may push to it") from None


def _push_status(porcelain: str, ref: str) -> tuple[str, str]:
    """(flag, summary) of our ref in ``git push --porcelain`` output: '!' means rejected."""
    for line in porcelain.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1].endswith(f":{ref}"):
            return fields[0], fields[2]
    return "", ""

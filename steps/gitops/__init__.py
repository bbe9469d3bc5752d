"""The GitOps repo adapter: everything mlferry does with git, through the git CLI.

Split by concept, so each part can be read on its own:

- :mod:`.errors`: one taxonomy of failures, worded the same wherever they happen;
- :mod:`.credentials`: the remote's URL, token or ssh key, and keeping them secret;
- :mod:`.runner`: the one place ``git`` runs, in a clean environment, failures classified;
- :mod:`.clone`: a shallow clone of a branch head, as publishing and snapshots start from;
- :mod:`.publish`: make folders on a branch hold exactly the given files, and push;
- :mod:`.snapshot`: the files under ``teams/<team>/`` at the head (reconcile, status);
- :mod:`.log`: the branch's commits and trailers (``mlferry history``, status).
"""

from mlferry.steps.gitops.credentials import (
    Identity, Remote, check_branch, display_url, identity_from, redact, remote_for, remote_kind,
)
from mlferry.steps.gitops.errors import (
    AuthFailed, BranchMissing, CommandFailed, GitOpsError, GitOpsUnavailable, HostKeyRejected, InvalidSetting,
    NotAFolder, PushRejected, RemoteMoved, RemoteUnreachable, RepoMissing,
)
from mlferry.steps.gitops.log import Commit, History, clone_history
from mlferry.steps.gitops.publish import (
    FolderChange, FolderCheck, Published, RetryPolicy, fast_import_script, publish_folder,
)
from mlferry.steps.gitops.runner import GIT_TIMEOUT, Git, git_environment
from mlferry.steps.gitops.snapshot import Snapshot, read_snapshot, remote_head

__all__ = [
    "AuthFailed", "BranchMissing", "CommandFailed", "Commit", "FolderChange", "FolderCheck", "GIT_TIMEOUT", "Git", "GitOpsError",
    "GitOpsUnavailable", "History", "HostKeyRejected", "Identity", "InvalidSetting", "NotAFolder", "Published",
    "PushRejected", "Remote", "RemoteMoved", "RemoteUnreachable", "RepoMissing", "RetryPolicy", "Snapshot",
    "check_branch", "clone_history", "display_url", "fast_import_script", "git_environment", "identity_from",
    "publish_folder", "read_snapshot", "redact", "remote_head", "remote_for", "remote_kind",
]

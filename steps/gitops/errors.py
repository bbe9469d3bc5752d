"""Why git failed, as one taxonomy for publishing, snapshot reading and history alike.

Every error is one line that names the remote (never its credentials) and what to do, so the
same failure reads the same wherever it happens. The transient kinds subclass
:class:`TransientError`: publishing retries them itself, and a step that still fails with one
exits with the code Argo retries on. Everything else a retry cannot fix, so it stops at once.
"""

from __future__ import annotations

from mlferry.steps.outcome import TransientError

UNREACHABLE_HINT = "check the URL and that the git server is reachable from here (DNS, proxy, firewall)"
BUSY_HINT = "another writer keeps pushing to the branch: run the promotion again later"
CREDENTIAL_HINT = ("set MLFERRY_GIT_TOKEN (https) or MLFERRY_GIT_SSH_KEY (ssh) "
                   "to a credential with write access")


class GitOpsError(RuntimeError):
    """A git operation on the GitOps remote failed; the message says what to do.

    ``reason`` is the short cause (what a retry loop logs), ``hint`` the advice; ``stderr`` and
    ``stdout`` are git's own (redacted) output, for callers that read a verdict in it.
    """

    def __init__(self, message: str, *, reason: str = "", hint: str = "", stderr: str = "", stdout: str = ""):
        super().__init__(message)
        self.reason, self.hint = reason or message, hint
        self.stderr, self.stdout = stderr, stdout


# --- permanent: retrying cannot help ---------------------------------------------------------------

class InvalidSetting(GitOpsError):
    """A value the adapter was given (remote URL, branch, key file, author, work directory) is unusable."""


class HostKeyRejected(GitOpsError):
    """The ssh server's key is not the one we know."""


class AuthFailed(GitOpsError):
    """The remote refused our credential (or we had none)."""


class RepoMissing(GitOpsError):
    """There is no git repository at the remote URL."""


class BranchMissing(GitOpsError):
    """The branch does not exist on the remote: an error for publishing and for reading a snapshot
    when the remote has other branches; the history reader treats it as empty history."""


class PushRejected(GitOpsError):
    """The remote refused the push for a reason other than a race (protection, hooks)."""


class NotAFolder(GitOpsError):
    """A file, symlink or submodule sits where one of our folders' parents should be."""


class CommandFailed(GitOpsError):
    """git failed in a way none of the kinds above names."""


# --- transient: another attempt may succeed --------------------------------------------------------

class RemoteUnreachable(GitOpsError, TransientError):
    """The network or the server failed (DNS, refused connection, timeout, 5xx)."""


class RemoteMoved(GitOpsError, TransientError):
    """The branch moved while we pushed: start again from its new head."""


class GitOpsUnavailable(GitOpsError, TransientError):
    """The remote stayed unreachable or busy through every retry; a later try may succeed."""


# --- reading git's stderr ------------------------------------------------------------------------

_HOST_KEY = ("host key verification failed", "remote host identification has changed")
_AUTH = ("permission denied", "authentication failed", "could not read username",
         "could not read password", "terminal prompts disabled", "access denied",
         "returned error: 401", "returned error: 403", "invalid username or password",
         "invalid credentials")
_TRANSIENT = ("could not resolve host", "name or service not known", "temporary failure in name resolution",
              "connection refused", "timed out", "failed to connect", "network is unreachable",
              "no route to host", "connection reset", "connection closed", "hung up unexpectedly",
              "early eof", "rpc failed", "returned error: 5", "kex_exchange_identification",
              "broken pipe", "couldn't connect")
_BRANCH_MISSING = ("remote branch", "not found in upstream")  # both: `git clone --branch` on a missing branch
_MISSING = ("does not appear to be a git repository", "repository not found", "not found",
            "returned error: 404", "no such file or directory")
FILTER_REFUSED = ("filter 'tree' not supported", "tree filter allows max depth", "filter 'combine' not supported",
                  "invalid filter-spec", "filter not supported")


def classify(action: str, stderr: str, stdout: str, *, where: str, ssh_key: str = "") -> GitOpsError:
    """The taxonomy's word for a failed git command. ``where`` names the remote for people;
    ``ssh_key`` says where the ssh key came from, when one was used."""
    output = {"stderr": stderr, "stdout": stdout}
    if detail := matching_line(stderr, _HOST_KEY):
        return HostKeyRejected(
            f"{where}: {detail} (the server's key is not the one we know); if the server really changed its "
            "key, put the new one in MLFERRY_GIT_SSH_KNOWN_HOSTS (or the file named by MLFERRY_GIT_KNOWN_HOSTS)",
            **output)
    if detail := matching_line(stderr, _AUTH):
        fix = f"check that the key in {ssh_key} is authorized with write access" if ssh_key else CREDENTIAL_HINT
        return AuthFailed(f"{where} refused authentication when trying to {action} ({detail}); {fix}", **output)
    if detail := matching_line(stderr, _TRANSIENT):
        reason = f"cannot {action}: {detail}"
        return RemoteUnreachable(f"{where}: {reason}; {UNREACHABLE_HINT}", reason=reason, hint=UNREACHABLE_HINT,
                                 **output)
    if all(needle in stderr.lower() for needle in _BRANCH_MISSING):
        return BranchMissing(f"{where}: could not {action} ({matching_line(stderr, _BRANCH_MISSING)})", **output)
    if detail := matching_line(stderr, _MISSING):
        return RepoMissing(f"{where} does not exist or is not a git repository ({detail}); "
                           "check MLFERRY_GITOPS_REPO", **output)
    return CommandFailed(f"{where}: could not {action} ({matching_line(stderr, ('',))})", **output)


def matching_line(stderr: str, needles: tuple[str, ...]) -> str:
    """The first line of git's output that contains one of needles ('' matches any line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("hint:")]
    lines.sort(key=lambda ln: not ln.lower().startswith(("fatal:", "error:")))  # stable: errors first
    for needle in needles:  # needles come most telling first
        for line in lines:
            if needle in line.lower():
                return line
    return "" if any(needles) else "git gave no reason"

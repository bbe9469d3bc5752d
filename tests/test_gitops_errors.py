"""One taxonomy for git failures: the same failure gets the same words and the same kind,
whether it happens while publishing, reading a snapshot or reading the history."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mlferry.history import model_history
from mlferry.steps import gitops
from mlferry.steps.gitops.errors import classify
from mlferry.steps.outcome import is_transient
from mlferry.steps.settings import Settings, SettingsError

FOLDER = "teams/ml/demo/staging"
CHANGE = gitops.FolderChange.single(FOLDER, {"kustomization.yaml": "resources: []\n"}, "promote demo v1\n")
ONE_TRY = gitops.RetryPolicy(attempts=1, base_delay=0.01)


@pytest.mark.parametrize(("stderr", "kind"), [
    ("fatal: Authentication failed for 'https://h/x.git/'", gitops.AuthFailed),
    ("Host key verification failed.\nfatal: Could not read from remote repository.", gitops.HostKeyRejected),
    ("fatal: unable to access 'https://h/': Could not resolve host: h", gitops.RemoteUnreachable),
    ("fatal: the remote end hung up unexpectedly", gitops.RemoteUnreachable),
    ("warning: Could not find remote branch x to clone.\nfatal: Remote branch x not found in upstream origin",
     gitops.BranchMissing),
    ("fatal: '/srv/x.git' does not appear to be a git repository", gitops.RepoMissing),
    ("fatal: something nobody foresaw", gitops.CommandFailed),
])
def test_git_stderr_is_classified_by_kind(stderr: str, kind: type) -> None:
    error = classify("fetch", stderr, "", where="GitOps remote h")
    assert type(error) is kind and "\n" not in str(error) and str(error).startswith("GitOps remote h")
    assert is_transient(error) == (kind is gitops.RemoteUnreachable)


def test_transient_kinds_are_transient_errors_and_the_rest_are_not() -> None:
    transient = {gitops.RemoteUnreachable, gitops.RemoteMoved, gitops.GitOpsUnavailable}
    for kind in (*transient, gitops.InvalidSetting, gitops.HostKeyRejected, gitops.AuthFailed, gitops.RepoMissing,
                 gitops.BranchMissing, gitops.PushRejected, gitops.NotAFolder, gitops.CommandFailed):
        assert issubclass(kind, gitops.GitOpsError)
        assert is_transient(kind("x")) == (kind in transient), kind


def test_a_missing_repo_reads_the_same_when_publishing_reading_and_reading_history(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.git")
    errors = []
    for attempt in (lambda: gitops.publish_folder(missing, "main", CHANGE, retry=ONE_TRY),
                    lambda: gitops.read_snapshot(missing, "main", "teams/ml/"),
                    lambda: model_history("demo", "", "ml", missing, "main")):
        with pytest.raises(gitops.RepoMissing) as raised:
            attempt()
        errors.append(str(raised.value))
    assert len(set(errors)) == 1 and "check MLFERRY_GITOPS_REPO" in errors[0]


def test_an_unreachable_remote_is_transient_for_readers_too() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/team/gitops.git"
    for read in (lambda: gitops.read_snapshot(url, "main", "teams/ml/", environ=dict(os.environ)),
                 lambda: model_history("demo", "", "ml", url, "main", environ=dict(os.environ))):
        with pytest.raises(gitops.RemoteUnreachable) as raised:
            read()
        assert is_transient(raised.value) and "reachable from here" in str(raised.value)


def test_publishing_runs_git_with_the_environment_it_was_given(tmp_path: Path, monkeypatch) -> None:
    # GIT_TEMPLATE_DIR is not stripped: if publish handed git os.environ instead, this would be lost.
    remote = tmp_path / "remote.git"
    templates = tmp_path / "templates"
    (templates / "info").mkdir(parents=True)
    (templates / "info" / "marker").write_text("from the given environment\n")
    work = tmp_path / "work"
    monkeypatch.delenv("GIT_TEMPLATE_DIR", raising=False)
    gitops.Git(tmp_path, os.environ).run("init", "-q", "--bare", "-b", "main", str(remote), action="init")
    gitops.publish_folder(str(remote), "main", CHANGE, workdir=work,
                          environ={**os.environ, "GIT_TEMPLATE_DIR": str(templates)})
    assert (work / ".git" / "info" / "marker").exists()


def test_no_gitops_repo_is_one_settings_error() -> None:
    with pytest.raises(SettingsError, match="no GitOps repo configured: set MLFERRY_GITOPS_REPO"):
        Settings().require_gitops_repo()
    assert Settings(gitops_repo="/srv/x.git").require_gitops_repo() == "/srv/x.git"


def test_a_branch_the_remote_lacks_is_an_error_never_an_orphan(tmp_path: Path) -> None:
    """A remote with only `master`, and mlferry told `main`: publishing and reading both say so,
    naming the remote and its branches, and the remote keeps exactly the branches it had."""
    from mlferry.stack import init_bare_repo

    remote = tmp_path / "team.git"
    init_bare_repo(remote, "master")
    before = gitops.Git(tmp_path, os.environ).run("--git-dir", str(remote), "for-each-ref", action="list")

    with pytest.raises(gitops.BranchMissing) as published:
        gitops.publish_folder(str(remote), "main", CHANGE, workdir=tmp_path / "work")
    message = str(published.value)
    assert "branch 'main' does not exist on" in message and "which has master" in message
    assert "MLFERRY_GITOPS_BRANCH" in message and "\n" not in message
    with pytest.raises(gitops.BranchMissing, match="which has master"):
        gitops.read_snapshot(str(remote), "main", "teams/ml/")
    after = gitops.Git(tmp_path, os.environ).run("--git-dir", str(remote), "for-each-ref", action="list")
    assert after == before and "refs/heads/main" not in after


def test_a_pods_ssh_key_without_the_hosts_key_is_refused_before_connecting(tmp_path) -> None:
    """In a pod, new every time, trust on first use would never check the host: the Secret must say."""
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    url = "ssh://git@git.example.invalid/team/gitops.git"
    with pytest.raises(gitops.InvalidSetting, match="add MLFERRY_GIT_SSH_KNOWN_HOSTS to the same Secret"):
        gitops.remote_for(url, {"MLFERRY_GIT_SSH_PRIVATE_KEY": key}, tmp_path)
    known = "git.example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    remote = gitops.remote_for(url, {"MLFERRY_GIT_SSH_PRIVATE_KEY": key, "MLFERRY_GIT_SSH_KNOWN_HOSTS": known},
                               tmp_path)
    assert "StrictHostKeyChecking=yes" in remote.env["GIT_SSH_COMMAND"]

"""Publishing over ssh where authentication matters: a real sshd on a loopback port.

The sshd is a private instance (its own host key, authorized_keys and config, ``-D -e -f``)
that lets the current user in with one key; the GitOps remote is a bare repo reached through
it. It needs Debian's ``openssh-server`` (``apt-get install -y openssh-server``); without it these
tests are skipped with that hint, except under MLFERRY_REQUIRE_SYSTEM_TESTS=1 (CI), where they fail.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mlferry.steps import gitops
from tests.conftest import require_binary
from mlferry.steps.commit import CommitInput, commit_folder

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
FAST = gitops.RetryPolicy(attempts=2, base_delay=0.01)
FOLDER = "teams/ml/demo/staging"


def run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def keypair(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_sshd(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 15s: {log.read_text()}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(root dir, port, authorized key, other key, known_hosts) of a running private sshd."""
    require_binary(SSHD, "install Debian's openssh-server (sudo apt-get install -y openssh-server) to run the SSH remote tests")
    if os.geteuid() == 0:  # as root, sshd insists on its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    root = tmp_path_factory.mktemp("sshd")
    host_key = keypair(root / "host_key")
    good, bad = keypair(root / "deploy_key"), keypair(root / "stranger_key")
    (root / "authorized_keys").write_text(Path(f"{good}.pub").read_text())
    port = free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {getpass.getuser()}\nLogLevel VERBOSE\n"
    )
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
    log = root / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=out, stderr=out)
    try:
        wait_for_sshd(proc, port, log)
        yield root, port, good, bad, known_hosts
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def ssh_remote(sshd, tmp_path: Path):
    """(ssh URL, bare repo path, environment with the authorized key)."""
    root, port, good, _, known_hosts = sshd
    repo = tmp_path / "remote.git"
    run("git", "init", "--quiet", "--bare", "--initial-branch=main", str(repo))
    run("git", "--git-dir", str(repo), "config", "uploadpack.allowFilter", "true")  # as GitHub and GitLab
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{port}{repo}"
    return url, repo, {"MLFERRY_GIT_SSH_KEY": str(good), "MLFERRY_GIT_KNOWN_HOSTS": str(known_hosts)}


def promotion() -> CommitInput:
    return CommitInput(model="demo", version="7", env="staging", folder=FOLDER,
                       files={"kustomization.yaml": "resources: []\n"}, run_id="r", trigger="manual")


def heads(repo: Path) -> str:
    return run("git", "--git-dir", str(repo), "for-each-ref", "--format=%(refname) %(objectname)")


def test_the_authorized_key_pushes_the_commit(ssh_remote) -> None:
    url, repo, environ = ssh_remote
    result = commit_folder(promotion(), url, "main", environ=environ, retry=FAST)

    assert result.changed and result.repo == url
    assert run("git", "--git-dir", str(repo), "rev-parse", "main") == result.sha
    assert run("git", "--git-dir", str(repo), "show", f"main:{FOLDER}/kustomization.yaml") == "resources: []"
    again = commit_folder(promotion(), url, "main", environ=environ, retry=FAST)
    assert (again.changed, again.sha) == (False, result.sha)


def test_a_promotion_over_ssh_fetches_no_file_contents(ssh_remote, tmp_path: Path) -> None:
    url, repo, environ = ssh_remote
    commit_folder(promotion(), url, "main", environ=environ, retry=FAST)
    other = CommitInput(**{**promotion().model_dump(), "folder": "teams/ml/demo/production", "env": "production",
                           "files": {"kustomization.yaml": "resources: [production]\n"}})
    result = commit_folder(other, url, "main", tmp_path / "work", environ=environ, retry=FAST)

    assert run("git", "--git-dir", str(repo), "rev-parse", "main") == result.sha
    blobs = run("git", "cat-file", "--batch-all-objects", "--batch-check=%(objecttype)", cwd=tmp_path / "work")
    assert blobs.split().count("blob") == 1  # our kustomization.yaml; the staging one was not fetched


def test_a_key_readable_by_others_is_still_usable(ssh_remote, tmp_path: Path) -> None:
    # Kubernetes mounts Secret files 0644 by default; ssh refuses such a key unless we copy it.
    url, repo, environ = ssh_remote
    mounted = tmp_path / "mounted_key"
    shutil.copy(environ["MLFERRY_GIT_SSH_KEY"], mounted)
    mounted.chmod(0o644)

    result = commit_folder(promotion(), url, "main", environ={**environ, "MLFERRY_GIT_SSH_KEY": str(mounted)})
    assert run("git", "--git-dir", str(repo), "rev-parse", "main") == result.sha


def test_a_wrong_key_fails_with_an_auth_error_and_pushes_nothing(sshd, ssh_remote, caplog) -> None:
    _, _, _, stranger, _ = sshd
    url, repo, environ = ssh_remote
    with pytest.raises(gitops.GitOpsError) as raised:
        commit_folder(promotion(), url, "main", environ={**environ, "MLFERRY_GIT_SSH_KEY": str(stranger)},
                      retry=FAST)

    message = str(raised.value)
    assert "refused authentication" in message and "Permission denied (publickey)" in message
    assert url in message and str(stranger) in message and "\n" not in message
    assert "retrying" not in caplog.text  # a wrong key is not retried
    assert heads(repo) == ""


def test_an_unknown_host_key_is_refused_and_nothing_is_pushed(sshd, ssh_remote, tmp_path: Path) -> None:
    _, port, _, stranger, _ = sshd
    url, repo, environ = ssh_remote
    impostor = tmp_path / "known_hosts"
    impostor.write_text(f"[127.0.0.1]:{port} {Path(f'{stranger}.pub').read_text()}")

    with pytest.raises(gitops.GitOpsError, match="Host key verification failed.*MLFERRY_GIT_KNOWN_HOSTS"):
        commit_folder(promotion(), url, "main", environ={**environ, "MLFERRY_GIT_KNOWN_HOSTS": str(impostor)},
                      retry=FAST)
    assert heads(repo) == ""


def test_ssh_url_forms_are_recognised() -> None:
    for url in ("git@github.com:org/gitops.git", "ssh://git@host:2222/x.git", "git+ssh://host/x.git", "host:x.git"):
        assert gitops.remote_kind(url) == "ssh", url
    for url in ("/srv/gitops.git", "./gitops.git", "file:///srv/gitops.git", "dir/with:colon"):
        assert gitops.remote_kind(url) == "local", url


def secret_texts(sshd, key: Path | None = None) -> dict[str, str]:
    """The ssh credential as a pod gets it from the mlferry-git Secret: text, not files."""
    _, _, good, _, known_hosts = sshd
    # As `kubectl create secret --from-file` made on Windows would carry it: CRLFs, no final newline.
    key_text = Path(key or good).read_text().replace("\n", "\r\n").rstrip("\r\n")
    return {"MLFERRY_GIT_SSH_PRIVATE_KEY": key_text, "MLFERRY_GIT_SSH_KNOWN_HOSTS": known_hosts.read_text()}


def test_a_key_given_as_text_pushes_and_leaves_no_copy_behind(sshd, ssh_remote, tmp_path, caplog) -> None:
    url, repo, _ = ssh_remote
    texts = secret_texts(sshd)
    result = commit_folder(promotion(), url, "main", tmp_path / "work", environ=texts, retry=FAST)

    assert run("git", "--git-dir", str(repo), "rev-parse", "main") == result.sha
    body = texts["MLFERRY_GIT_SSH_PRIVATE_KEY"].splitlines()[1]  # a line of the key itself
    left = [p for p in tmp_path.rglob("*") if p.is_file() and body.encode() in p.read_bytes()]
    assert left == [] and body not in caplog.text


def test_a_wrong_key_given_as_text_names_the_secret_variable(sshd, ssh_remote) -> None:
    _, _, _, stranger, _ = sshd
    url, repo, _ = ssh_remote
    with pytest.raises(gitops.GitOpsError) as raised:
        commit_folder(promotion(), url, "main", environ=secret_texts(sshd, stranger), retry=FAST)
    message = str(raised.value)
    assert "refused authentication" in message and "check that the key in MLFERRY_GIT_SSH_PRIVATE_KEY" in message
    assert "BEGIN OPENSSH" not in message and heads(repo) == ""


def test_the_workflow_template_carries_the_ssh_secret_to_the_commit_step(sshd, ssh_remote, registered_model,
                                                                          tmp_path) -> None:
    """End to end through the generated YAML, with the Secrets given as Secret objects: the key
    reaches the commit step only through the template's secretKeyRef, as on a cluster."""
    from mlferry.local import LocalArgo
    from mlferry.engine import Cluster

    url, repo, _ = ssh_remote
    name, version = registered_model(alias="production")
    shell = {k: v for k, v in os.environ.items()
             if k not in ("MLFERRY_GIT_SSH_KEY", "MLFERRY_GIT_KNOWN_HOSTS", "GIT_SSH_COMMAND")}
    local = LocalArgo.from_environment(None, tmp_path / "runs", {**shell, "MLFERRY_GITOPS_REPO": url,
                                                                  "MLFERRY_GITOPS_CREATE_BRANCH": "true"})  # empty remote
    names = local.bundle.secrets
    secrets = {
        names.s3: {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        names.webhook: {"MLFERRY_WEBHOOK_SECRET": "unused-for-a-manual-run"},
        names.mlflow: {},
        names.git: secret_texts(sshd),
    }
    local.cluster = lambda: Cluster(config_maps=LocalArgo.cluster(local).config_maps, secrets=secrets)

    run = local.submit("workflowtemplate/mlferry-promote",
                       {"model": name, "alias": "production", "env": "production"})

    assert run.phase == "Succeeded", run.message
    message = run_git_log(repo)
    assert f"Model: {name}" in message and f"Version: {version}" in message
    records = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert secret_texts(sshd)["MLFERRY_GIT_SSH_PRIVATE_KEY"].splitlines()[1] not in records


def run_git_log(repo: Path) -> str:
    return run("git", "--git-dir", str(repo), "log", "-1", "--format=%B", "main")

"""Where the GitOps remote is and how to authenticate to it, without a secret leaking anywhere.

Credentials never reach ``.git/config``, argv, logs or error messages: an https token
(``MLFERRY_GIT_TOKEN``) travels as an ``http.<url>.extraHeader`` through ``GIT_CONFIG_*``
environment variables scoped to the remote's origin; an ssh key through ``GIT_SSH_COMMAND``,
from a file (``MLFERRY_GIT_SSH_KEY``) or, in a pod, from the Secret's text
(``MLFERRY_GIT_SSH_PRIVATE_KEY``, written 0600 into the caller's scratch folder and removed with
it). Whatever git prints goes through :func:`redact` before anyone sees it.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import shlex
import stat
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from mlferry.steps.gitops.errors import InvalidSetting

logger = logging.getLogger(__name__)

DEFAULT_AUTHOR = ("mlferry", "mlferry@users.noreply.local")
DEFAULT_TOKEN_USER = "x-access-token"  # what GitHub documents; GitLab and Gitea accept any name


@dataclasses.dataclass(frozen=True)
class Remote:
    """How to reach the GitOps remote: the URL git uses, the one we show, and the secrets."""

    url: str
    display: str
    env: Mapping[str, str]
    secrets: tuple[str, ...] = ()
    ssh_key: str = ""  # where the ssh key came from, for messages: "MLFERRY_GIT_SSH_KEY (/path)"

    @property
    def where(self) -> str:
        """How error messages name the remote."""
        return f"GitOps remote {self.display}"


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    email: str


_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?[^@/:]+:(?!//)")
_SCHEMES = {"file", "http", "https", "ssh", "git+ssh", "ssh+git"}


def display_url(url: str) -> str:
    """The remote as it may appear in logs and outputs: no password, no https user name."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
    else:  # an ssh user name is not a secret; an ssh password would be
        user, _, hostport = parts.netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{hostport}" if user else hostport
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Defence in depth: git should never echo a secret, but if it does, we do not."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return re.sub(r"(\w+://)[^/@\s]*@", r"\1", text)


def remote_kind(url: str) -> str:
    """'local', 'http' or 'ssh'; anything else (ext::, fd::, options) is refused."""
    if not url or url.startswith("-"):
        raise InvalidSetting(f"GitOps remote {url!r} is not a git URL or path: set MLFERRY_GITOPS_REPO")
    if "://" in url:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _SCHEMES:
            raise InvalidSetting(
                f"GitOps remote {display_url(url)} uses unsupported scheme {scheme!r}: "
                "use https://, ssh://, user@host:path, file:// or a local path"
            )
        return {"file": "local", "http": "http", "https": "http"}.get(scheme, "ssh")
    if "::" in url:  # git's remote-helper syntax (ext::, fd::) runs arbitrary commands
        raise InvalidSetting(f"GitOps remote {url!r} uses a remote helper, which mlferry refuses")
    if _SCP_LIKE.match(url):  # git's rule: a ':' before any '/' means scp-like ssh
        return "ssh"
    return "local"


def remote_for(url: str, environ: Mapping[str, str], scratch: Path) -> Remote:
    """Resolve URL + MLFERRY_GIT_* credentials into what git needs; scratch holds key copies."""
    kind = remote_kind(url)
    if kind == "local":
        return Remote(url=_local_url(url), display=url, env={})
    if kind == "http":
        return _http_remote(url, environ)
    return _ssh_remote(url, environ, scratch)


def _local_url(url: str) -> str:
    # file:// rather than a path, so --depth is honoured and pushes behave like any transport.
    return url if "://" in url else Path(url).expanduser().resolve().as_uri()


def _http_remote(url: str, environ: Mapping[str, str]) -> Remote:
    parts = urlsplit(url)
    token = environ.get("MLFERRY_GIT_TOKEN", "")
    user = environ.get("MLFERRY_GIT_USERNAME", "") or DEFAULT_TOKEN_USER
    if parts.password and not token:  # credentials in the URL: move them out of it
        token, user = parts.password, parts.username or user
    clean = display_url(url)
    if not token:
        return Remote(url=clean, display=clean, env={})
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        logger.warning("sending the git token to %s over plain http", clean)
    header = "Authorization: Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
    origin = urlunsplit((parts.scheme, urlsplit(clean).netloc, "/", "", ""))
    env = _config_env({f"http.{origin}.extraHeader": header})
    return Remote(url=clean, display=clean, env=env, secrets=(token, header.split()[-1]))


def _config_env(values: Mapping[str, str]) -> dict[str, str]:
    """GIT_CONFIG_COUNT/KEY/VALUE: configuration for the child processes only, never on disk."""
    env = {"GIT_CONFIG_COUNT": str(len(values))}
    for index, (key, value) in enumerate(values.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def _ssh_remote(url: str, environ: Mapping[str, str], scratch: Path) -> Remote:
    display = display_url(url)
    # Paths (a laptop's key files) or contents (a pod's, from the mlferry-git Secret): a path wins.
    key = environ.get("MLFERRY_GIT_SSH_KEY", "")
    key_source = f"MLFERRY_GIT_SSH_KEY ({key})"
    if not key:
        key = _secret_file(environ.get("MLFERRY_GIT_SSH_PRIVATE_KEY", ""), scratch / "ssh-key")
        key_source = "MLFERRY_GIT_SSH_PRIVATE_KEY"
    known_hosts = environ.get("MLFERRY_GIT_KNOWN_HOSTS", "") or _secret_file(
        environ.get("MLFERRY_GIT_SSH_KNOWN_HOSTS", ""), scratch / "known_hosts")
    if not key and not known_hosts and ("GIT_SSH_COMMAND" in os.environ or "GIT_SSH" in os.environ):
        return Remote(url=url, display=display, env={})  # the user's own ssh setup, as is
    # BatchMode: a missing key or unknown host fails at once instead of prompting on a tty.
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if key:
        if not Path(key).is_file():
            raise InvalidSetting(f"MLFERRY_GIT_SSH_KEY {key} is not a readable file (GitOps remote {display})")
        options += ["-i", _private_copy(Path(key), scratch), "-o", "IdentitiesOnly=yes"]
    if known_hosts:
        if not Path(known_hosts).is_file():
            raise InvalidSetting(f"MLFERRY_GIT_KNOWN_HOSTS {known_hosts} is not a readable file")
        options += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
    elif key_source == "MLFERRY_GIT_SSH_PRIVATE_KEY":
        # A key handed over as text comes from the mlferry-git Secret: a pod, new every time, where
        # "trust on first use" would trust every first use, i.e. never check the host at all.
        raise InvalidSetting(f"GitOps remote {display}: an ssh key from MLFERRY_GIT_SSH_PRIVATE_KEY needs the "
                             "host's key too: add MLFERRY_GIT_SSH_KNOWN_HOSTS to the same Secret (the output of "
                             "`ssh-keyscan HOST`, checked against the host's published fingerprints)")
    elif key:  # a laptop's key file: trust on first use, and say so
        logger.warning("no known hosts given (MLFERRY_GIT_SSH_KNOWN_HOSTS or MLFERRY_GIT_KNOWN_HOSTS): "
                       "trusting %s's host key on first use", display)
        options += ["-o", "StrictHostKeyChecking=accept-new"]
    command = "ssh " + " ".join(shlex.quote(o) for o in options)
    return Remote(url=url, display=display, env={"GIT_SSH_COMMAND": command}, ssh_key=key_source if key else "")


def _secret_file(content: str, path: Path) -> str:
    """Write a credential given as text to a file only we can read; its path, or "" if none."""
    if not content.strip():
        return ""
    path.touch(mode=0o600)
    # ssh rejects a key without its final newline, and Secrets made on Windows carry CRLFs.
    path.write_text(content.replace("\r\n", "\n").rstrip("\n") + "\n")
    return str(path)


def _private_copy(key: Path, scratch: Path) -> str:
    # Kubernetes mounts Secret files 0644 by default, and ssh refuses a key others can read.
    if not key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return str(key)
    copy = scratch / "ssh-key-copy"
    copy.touch(mode=0o600)
    copy.write_bytes(key.read_bytes())
    return str(copy)


def identity_from(environ: Mapping[str, str]) -> Identity:
    """Who our commits say wrote them; refused if it would corrupt the commit header."""
    name = environ.get("MLFERRY_GIT_AUTHOR_NAME", "") or DEFAULT_AUTHOR[0]
    email = environ.get("MLFERRY_GIT_AUTHOR_EMAIL", "") or DEFAULT_AUTHOR[1]
    for what, value in (("MLFERRY_GIT_AUTHOR_NAME", name), ("MLFERRY_GIT_AUTHOR_EMAIL", email)):
        if any(c in value for c in "<>\n\r\0"):
            raise InvalidSetting(f"{what} {value!r} may not contain '<', '>' or line breaks")
    return Identity(name=name, email=email)


def check_branch(branch: str) -> str:
    """The branch name, if git would take it literally; refused before any git runs otherwise."""
    valid = re.fullmatch(r"[A-Za-z0-9._/-]+", branch or "") and not branch.startswith(("-", "/"))
    bad = any(p in branch for p in ("..", "//", "@{", ".lock/")) or branch.endswith((".", "/", ".lock"))
    if not valid or bad:
        raise InvalidSetting(f"GitOps branch {branch!r} is not a valid branch name: set MLFERRY_GITOPS_BRANCH")
    return branch

"""The local stack: an MLflow server, an S3-compatible server and a GitOps remote on loopback.

It stands in for a team's namespace (MLflow, MinIO, the GitOps repo) so that the same steps
and the same workflow YAML run on one machine. MinIO's server binary is not installable from
the package registries, so the S3 part is moto's standalone server, used through boto3
exactly as MinIO would be.

State lives in one folder (default ``.mlferry/``): ``stack.json`` (what ``up`` started, so that
``down`` stops exactly that), ``secrets.env`` (mode 600: generated credentials), ``logs/``,
the sqlite registry and the bare GitOps repo.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlferry.steps.gitops import Git

DEFAULT_DIR = ".mlferry"
DEFAULT_PORTS = {"s3": 9050, "mlflow": 5050}
ARTIFACTS_BUCKET = "mlflow-artifacts"  # MLflow's own artifact store
MODELS_BUCKET = "mlferry"  # where mlferry publishes; stands in for the team's MinIO bucket
GITOPS_BRANCH = "main"
TEAM = "ml"
READY_TIMEOUT = 90.0


class StackError(RuntimeError):
    """A part of the stack could not start or stop; the message says which and what to do."""


@dataclass
class Part:
    name: str
    port: int
    pid: int = 0
    cmd: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class State:
    parts: dict[str, Part]

    def to_json(self) -> str:
        return json.dumps({name: asdict(p) for name, p in self.parts.items()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "State":
        return cls({name: Part(**p) for name, p in json.loads(text).items()})


class Stack:
    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIR, ports: dict[str, int] | None = None):
        self.dir = Path(directory).resolve()
        self.ports = {**DEFAULT_PORTS, **(ports or {})}

    # -- paths -----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    @property
    def secrets_file(self) -> Path:
        return self.dir / "secrets.env"

    @property
    def gitops_repo(self) -> Path:
        return self.dir / "gitops.git"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    # -- public operations -----------------------------------------------------------------
    def up(self, log=print) -> dict[str, str]:
        """Start whatever is not running yet; return the environment that reaches the stack."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        creds = self._secrets()
        state = self._state()
        self._forget_lost_artifacts(state, log)
        for name in ("s3", "mlflow"):
            part = state.parts.get(name)
            if part and _alive(part) and _answers(part):
                log(f"{name:7} already running at {part.url} (pid {part.pid})")
                continue
            part = self._start(name, creds, state)
            state.parts[name] = part
            self._write_state(state)
            log(f"{name:7} started at {part.url} (pid {part.pid})")
            if name == "s3":
                _create_buckets(part.url, creds)
        self._init_gitops(log)
        return self.environment()

    def _forget_lost_artifacts(self, state: State, log) -> None:
        """moto keeps objects in memory: once it stopped, what the registry and the GitOps repo
        point at is gone, so they start fresh too rather than reference missing artifacts."""
        s3 = state.parts.get("s3")
        if s3 and _alive(s3):
            return
        mlflow = state.parts.get("mlflow")
        if mlflow and _alive(mlflow):
            raise StackError(f"the S3 server of {self.dir} is not running but MLflow is; "
                             "run `mlferry stack down` then `mlferry stack up`")
        stale = [p for p in (self.dir / "mlflow.db", self.gitops_repo) if p.exists()]
        if stale:
            log("s3      starts empty (moto keeps objects in memory), so the registry and the GitOps "
                "repo start fresh too")
            for path in stale:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def down(self, log=print) -> None:
        state = self._state()
        for name in ("mlflow", "s3"):
            part = state.parts.get(name)
            if not part:
                continue
            if _alive(part):
                _stop(part)
                log(f"{name:7} stopped (pid {part.pid})")
            else:
                log(f"{name:7} was not running")
            del state.parts[name]
            self._write_state(state)

    def status(self) -> list[tuple[str, str, str]]:
        """(part, state, where) for each part of the stack."""
        state = self._state()
        rows = []
        for name in ("mlflow", "s3"):
            part = state.parts.get(name)
            if part is None:
                rows.append((name, "stopped", "-"))
            elif not _alive(part):
                rows.append((name, "dead", f"see {part.log}"))
            else:
                rows.append((name, "running" if _answers(part) else "starting", part.url))
        rows.append(("gitops", "ready" if self.gitops_repo.exists() else "absent", str(self.gitops_repo)))
        return rows

    def environment(self) -> dict[str, str]:
        state = self._state()
        missing = [n for n in ("s3", "mlflow") if n not in state.parts]
        if missing:
            raise StackError(f"the stack in {self.dir} is not up ({', '.join(missing)} missing); run `mlferry stack up`")
        creds = self._secrets()
        return {
            "MLFLOW_TRACKING_URI": state.parts["mlflow"].url,
            "MLFLOW_S3_ENDPOINT_URL": state.parts["s3"].url,
            "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFERRY_GITOPS_REPO": str(self.gitops_repo),
            "MLFERRY_GITOPS_BRANCH": GITOPS_BRANCH,
            "MLFERRY_BUCKET": MODELS_BUCKET,
            "MLFERRY_TEAM": TEAM,
            "MLFERRY_WEBHOOK_SECRET": creds["MLFERRY_WEBHOOK_SECRET"],
        }

    # -- internals -------------------------------------------------------------------------
    def _state(self) -> State:
        if not self.state_file.exists():
            return State({})
        return State.from_json(self.state_file.read_text())

    def _write_state(self, state: State) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.state_file)

    def _secrets(self) -> dict[str, str]:
        """Credentials made once per stack folder and kept there, readable by the owner only."""
        if self.secrets_file.exists():
            lines = self.secrets_file.read_text().splitlines()
            return dict(line.split("=", 1) for line in lines if "=" in line)
        creds = {
            "AWS_ACCESS_KEY_ID": "mlferry" + secrets.token_hex(6),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "MLFERRY_WEBHOOK_SECRET": secrets.token_urlsafe(32),
            # Fernet key: MLflow encrypts stored webhook secrets with it.
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{k}={v}\n" for k, v in creds.items())
        return creds

    def _start(self, name: str, creds: dict[str, str], state: State) -> Part:
        port = self.ports[name] or _free_port()
        _check_port_free(name, port)
        part = Part(name=name, port=port, log=str(self.logs / f"{name}.log"))
        part.cmd, env = self._command(part, creds, state)
        with open(part.log, "ab") as out:
            proc = subprocess.Popen(
                part.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.dir, start_new_session=True,  # own process group: down stops it whole
            )
        part.pid = proc.pid
        _wait_ready(part, proc)
        return part

    def _command(self, part: Part, creds: dict[str, str], state: State) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"], "AWS_DEFAULT_REGION": "us-east-1"}
        if part.name == "s3":
            return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(part.port)], env
        env.update({
            "MLFLOW_S3_ENDPOINT_URL": state.parts["s3"].url,
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": creds["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"],
            # The receiver is on loopback and speaks plain http (see DESIGN.md, the events path).
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            # MLflow caches its webhook list per event (60 s by default): without this, a webhook
            # just registered with `mlferry webhook register` would miss the next minute of events.
            "MLFLOW_WEBHOOK_CACHE_TTL": os.environ.get("MLFLOW_WEBHOOK_CACHE_TTL", "1"),
            # No background job consumers: the local stack needs none and they cost memory.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(part.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.dir / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", f"s3://{ARTIFACTS_BUCKET}",
        ]
        return cmd, env

    def _init_gitops(self, log) -> None:
        if self.gitops_repo.exists():
            return
        _init_bare_repo(self.gitops_repo, GITOPS_BRANCH)
        log(f"gitops  bare repo at {self.gitops_repo} (branch {GITOPS_BRANCH})")


def _init_bare_repo(path: Path, branch: str) -> None:
    """A bare repo with one commit, standing in for the team's GitOps remote."""
    with tempfile.TemporaryDirectory() as work:
        bare, clone = Git(path, os.environ), Git(Path(work), os.environ)
        bare.run("init", "-q", "--bare", "-b", branch, str(path), action="create the GitOps repo", cwd=clone.root)
        bare.run("config", "uploadpack.allowFilter", "true", action="configure the GitOps repo")  # as GitHub: blobless clones
        readme = clone.root / "README.md"
        readme.write_text("# GitOps repo\n\nmlferry writes `teams/<team>/<model>/<env>/`; Argo CD applies it.\n")
        author = ("-c", "user.name=mlferry", "-c", "user.email=mlferry@users.noreply.local")
        clone.run("init", "-q", "-b", branch, action="create the first commit")
        clone.run(*author, "add", "README.md", action="create the first commit")
        clone.run(*author, "commit", "-q", "-m", "Initial commit", action="create the first commit")
        clone.run(*author, "push", "-q", str(path), branch, action="create the first commit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port_free(name: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(
                f"cannot start {name}: port {port} on 127.0.0.1 is taken by another process; "
                f"stop it or choose another port with --{name}-port"
            ) from None


def _health_url(part: Part) -> str:
    return f"{part.url}/health" if part.name == "mlflow" else f"{part.url}/moto-api/"


def _answers(part: Part) -> bool:
    try:
        with urllib.request.urlopen(_health_url(part), timeout=2) as resp:
            return resp.status < 500
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(part: Part, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{part.name} exited with code {proc.returncode} while starting; "
                             f"last lines of {part.log}:\n{_tail(part.log)}")
        if _answers(part):
            return
        time.sleep(0.3)
    _stop(part)
    raise StackError(f"{part.name} did not answer on {part.url} within {READY_TIMEOUT:.0f}s; "
                     f"last lines of {part.log}:\n{_tail(part.log)}")


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(part: Part) -> bool:
    """True when the pid still runs the command we started (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{part.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [c.decode(errors="replace") for c in cmdline if c] == part.cmd


def _stop(part: Part, timeout: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(part.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(part.pid):
                _reap(part.pid)
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group? Zombies of our own children are reaped."""
    _reap(pgid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _create_buckets(url: str, creds: dict[str, str]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACTS_BUCKET, MODELS_BUCKET):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


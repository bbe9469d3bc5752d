"""The local stack: an MLflow server, an S3-compatible server and a GitOps remote on loopback.

It stands in for a team's namespace (MLflow, MinIO, the GitOps repo) so that the same steps
and the same workflow YAML run on one machine. MinIO's server binary is not installable from
the package registries, so the S3 part is moto's standalone server, used through boto3
exactly as MinIO would be.

State lives in one folder (default ``.mlferry/``, mode 700, its files 600): ``stack.json`` (what
``up`` started, so that ``down`` stops exactly that, and the ports it used, reused next time),
``secrets.env`` (generated credentials), ``logs/``, the sqlite registry ``mlflow.db``, the bare
GitOps repo ``gitops.git`` and ``s3/``, the S3 objects as of the last ``down`` (see
mlferry.stackdata). ``down`` keeps all of it, like a docker-compose volume; ``down --purge`` and
``reset`` delete it.

The S3 server checks credentials, as MinIO does: moto accepts any key until told otherwise, so
the stack spends moto's first unauthenticated requests on one IAM user allowed ``s3:*`` and its
key (see _provision_s3_key); every later request must be signed with that key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlferry import stackdata

from mlferry.steps.gitops import Git

DEFAULT_DIR = ".mlferry"
DEFAULT_PORTS = {"s3": 9050, "mlflow": 5050}
ARTIFACTS_BUCKET = "mlflow-artifacts"  # MLflow's own artifact store
MODELS_BUCKET = "mlferry"  # where mlferry publishes; stands in for the team's MinIO bucket
GITOPS_BRANCH = "main"
TEAM = "ml"
READY_TIMEOUT = 90.0
S3_USER = "mlferry"
S3_KEY_SEED = "MLFERRY_S3_KEY_SEED"  # in secrets.env: moto makes the same key from it at every start
S3_SETUP_REQUESTS = 3  # CreateUser, PutUserPolicy, CreateAccessKey: then moto checks every signature


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
    ports: dict[str, int] = field(default_factory=dict)  # the ports last used, reused when free
    lost: str = ""  # set when the S3 server stopped without saving: what happened

    def to_json(self) -> str:
        return json.dumps({"parts": {name: asdict(p) for name, p in self.parts.items()},
                           "ports": self.ports, "lost": self.lost}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "State":
        data = json.loads(text)
        if "parts" not in data:  # written by an mlferry that kept only the parts
            data = {"parts": data}
        return cls({name: Part(**p) for name, p in data["parts"].items()},
                   {k: int(v) for k, v in data.get("ports", {}).items()}, data.get("lost", ""))


class Stack:
    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIR, ports: dict[str, int] | None = None):
        self.dir = Path(directory).resolve()
        self.requested_ports = dict(ports or {})  # these win; 0 picks a free port
        self.ports = {**DEFAULT_PORTS, **self.requested_ports}

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

    @property
    def database(self) -> Path:
        return self.dir / "mlflow.db"

    @property
    def s3_data(self) -> Path:
        return self.dir / "s3"

    # -- public operations -----------------------------------------------------------------
    def up(self, log=print, restore_last_save: bool = False) -> dict[str, str]:
        """Start whatever is not running yet, with the data the last `down` kept; return the
        environment that reaches the stack.

        restore_last_save: the S3 server stopped without `down` saving its objects (killed, or
        the machine restarted); start anyway with the objects of the last save."""
        _private_dir(self.dir)
        _private_dir(self.logs)
        self._tighten_modes()
        creds = self._secrets()
        state = self._state()
        snapshot = self._check_restorable(state, restore_last_save)
        had_data = self.database.exists() or snapshot is not None
        started = False
        for name in ("s3", "mlflow"):
            part = state.parts.get(name)
            if part and _alive(part) and _answers(part):
                log(f"{name:7} already running at {part.url} (pid {part.pid})")
                continue
            if name == "s3":
                part, creds = self._start_s3(creds, state, snapshot, log)
                state.lost = ""
            else:
                part = self._start(name, creds, state, log)
            state.parts[name] = part
            state.ports[name] = part.port
            self._write_state(state)
            log(f"{name:7} started at {part.url} (pid {part.pid})")
            started = True
        self._init_gitops(log)
        if had_data and started:
            log(f"kept    {self._kept_summary()} (in {self.dir}; `mlferry stack reset` deletes them)")
        return self.environment()

    def down(self, log=print, purge: bool = False) -> None:
        """Stop exactly what `up` started. The S3 objects are saved to disk first, so that the
        next `up` has them back (the registry and the GitOps repo are on disk already);
        purge=True deletes all the stack's data instead."""
        state = self._state()
        mlflow = state.parts.get("mlflow")
        if mlflow:
            log(f"mlflow  {_stop_part(mlflow)}")
            del state.parts["mlflow"]
            self._write_state(state)
        s3 = state.parts.get("s3")
        if s3:
            if _alive(s3) and not purge:
                self._save_s3(s3, log)
            elif not _alive(s3) and not purge:
                state.lost = f"the S3 server (pid {s3.pid}) stopped without `mlferry stack down` saving its objects"
            log(f"s3      {_stop_part(s3)}")
            del state.parts["s3"]
            self._write_state(state)
        if purge:
            self._purge(state, log)

    def reset(self, log=print) -> None:
        """Stop the stack and delete its data: registry, S3 objects, GitOps repo, run records."""
        self.down(log, purge=True)

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

    def data_summary(self) -> str:
        """Where the data is kept and what the last save holds, for `mlferry stack status`."""
        try:
            snapshot = stackdata.read(self.s3_data)
        except stackdata.SnapshotError as err:
            return f"{self.dir} (s3 save unreadable: {err})"
        if snapshot is None:
            return f"{self.dir} (s3 objects not saved yet: `mlferry stack down` saves them)"
        return (f"{self.dir} (s3 saved {snapshot.saved_at}: {len(snapshot.objects)} objects, "
                f"{_size(snapshot.size)})")

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
            # MLflow clients fetch and send artifacts through presigned S3 URLs when the server offers
            # them. moto checks a signature only in the Authorization header and fails a presigned
            # URL's (in the query) with HTTP 500, so clients stream through the tracking server.
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
            "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
        }

    # -- keeping data ------------------------------------------------------------------------
    def _check_restorable(self, state: State, restore_last_save: bool) -> stackdata.Snapshot | None:
        """Refuse to start on data that cannot be put back whole, rather than start a registry
        and a GitOps repo that point at objects that are gone. Returns the save to restore."""
        s3 = state.parts.get("s3")
        if s3 and _alive(s3):
            return None  # running: its objects are in memory
        mlflow = state.parts.get("mlflow")
        if mlflow and _alive(mlflow):
            raise StackError(f"the S3 server of {self.dir} is not running but MLflow is; "
                             "run `mlferry stack down` then `mlferry stack up`")
        if s3 and not state.lost:
            state.lost = f"the S3 server (pid {s3.pid}) stopped without `mlferry stack down` saving its objects"
            del state.parts["s3"]
            self._write_state(state)
        try:
            snapshot = stackdata.read(self.s3_data)
            if snapshot is not None:
                stackdata.verify(self.s3_data, snapshot)
        except stackdata.SnapshotError as err:
            raise StackError(f"cannot restore the S3 objects of {self.dir}: {err}; run `mlferry stack reset` "
                             "to start empty (it deletes the registry, the S3 objects and the GitOps repo)") from None
        when = f"the last save, {snapshot.saved_at}" if snapshot else "the stack started (nothing was saved)"
        if state.lost and not restore_last_save:
            raise StackError(f"{state.lost} (killed, or the machine restarted): objects written since {when} are "
                             "gone, and the registry may point at them; run `mlferry stack reset` to start empty, "
                             "or `mlferry stack up --restore-last-save` to start with what was saved")
        if snapshot is None and self.database.exists() and not state.lost:
            raise StackError(f"{self.database} holds a registry but {self.s3_data} holds no saved S3 objects (an older "
                             "mlferry kept them in memory only), so its models point at objects that are gone; "
                             "run `mlferry stack reset` to start empty")
        return snapshot

    def _save_s3(self, s3: Part, log) -> None:
        started = time.monotonic()
        try:
            snapshot = stackdata.save(_s3_client(s3.url, self._secrets()), self.s3_data)
        except Exception as err:  # the server keeps running, so nothing is lost yet
            raise StackError(f"could not save the S3 objects to {self.s3_data} ({err}); the S3 server is left "
                             "running: fix the cause and run `mlferry stack down` again, or `mlferry stack down "
                             "--purge` to discard them") from None
        log(f"s3      saved {len(snapshot.objects)} objects ({_size(snapshot.size)}) to {self.s3_data} "
            f"in {time.monotonic() - started:.1f}s")

    def _purge(self, state: State, log) -> None:
        doomed = [("registry", self.database), ("S3 objects", self.s3_data), ("GitOps repo", self.gitops_repo),
                  ("run records", self.dir / "runs")]
        doomed += [("registry", p) for p in self.dir.glob("mlflow.db-*")]  # sqlite's journal, if any
        deleted = [f"{what} ({path.name})" for what, path in doomed if path.exists()]
        for _what, path in doomed:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        state.lost = ""
        if self.state_file.exists():
            self._write_state(state)
        if deleted:
            log(f"deleted {', '.join(deleted)} in {self.dir}; kept secrets.env, logs and the ports")
        else:
            log(f"nothing to delete in {self.dir}")

    def _kept_summary(self) -> str:
        kept = []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
                models = db.execute("SELECT COUNT(*) FROM registered_models").fetchone()[0]
            kept.append(f"registry {models} model{'s' * (models != 1)}")
        except sqlite3.Error:
            pass
        snapshot = stackdata.read(self.s3_data)
        if snapshot is not None:
            kept.append(f"s3 {len(snapshot.objects)} object{'s' * (len(snapshot.objects) != 1)} "
                        f"({_size(snapshot.size)})")
        count = subprocess.run(["git", "--git-dir", str(self.gitops_repo), "rev-list", "--count", "--all"],
                               capture_output=True, text=True)
        if count.returncode == 0:
            kept.append(f"gitops {count.stdout.strip()} commits")
        return ", ".join(kept)

    # -- internals -------------------------------------------------------------------------
    def _state(self) -> State:
        if not self.state_file.exists():
            return State({})
        return State.from_json(self.state_file.read_text())

    def _write_state(self, state: State) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        _write_private(tmp, state.to_json())
        tmp.replace(self.state_file)

    def _tighten_modes(self) -> None:
        """Folders made by an older mlferry: the files that hold data or secrets become the owner's only."""
        for path in (self.state_file, self.secrets_file, self.database, *self.logs.glob("*.log")):
            if path.exists():
                os.chmod(path, 0o600)

    def _secrets(self) -> dict[str, str]:
        """Credentials made once per stack folder and kept there, readable by the owner only."""
        if self.secrets_file.exists():
            lines = self.secrets_file.read_text().splitlines()
            creds = dict(line.split("=", 1) for line in lines if "=" in line)
            if S3_KEY_SEED in creds:
                return creds
        else:
            creds = {
                "MLFERRY_WEBHOOK_SECRET": secrets.token_urlsafe(32),
                # Fernet key: MLflow encrypts stored webhook secrets with it.
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            }
        creds[S3_KEY_SEED] = str(secrets.randbits(62))
        self._write_secrets(creds)
        return creds

    def _write_secrets(self, creds: dict[str, str]) -> None:
        tmp = self.secrets_file.with_suffix(".tmp")
        _write_private(tmp, "".join(f"{k}={v}\n" for k, v in creds.items()))
        tmp.replace(self.secrets_file)

    def _start_s3(self, creds: dict[str, str], state: State, snapshot: stackdata.Snapshot | None,
                  log) -> tuple[Part, dict[str, str]]:
        """Start moto, make the key it accepts, put the saved objects back."""
        part = self._start("s3", creds, state, log)
        try:
            key_id, secret = _provision_s3_key(part.url, int(creds[S3_KEY_SEED]))
            if (creds.get("AWS_ACCESS_KEY_ID"), creds.get("AWS_SECRET_ACCESS_KEY")) != (key_id, secret):
                if creds.get("AWS_ACCESS_KEY_ID"):
                    log(f"s3      the access key changed ({self.secrets_file} has the new one): shells that "
                        "ran `eval \"$(mlferry stack env)\"` must run it again")
                creds = {**creds, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
                self._write_secrets(creds)
            client = _s3_client(part.url, creds)
            _check_credentials_enforced(part.url, creds)
            if snapshot is not None:
                stackdata.restore(client, self.s3_data, snapshot)
            _create_buckets(client)
        except BaseException as err:
            _stop(part)
            if isinstance(err, Exception) and not isinstance(err, StackError):
                raise StackError(f"s3 started but could not be set up ({err}); it is stopped again, "
                                 f"see {part.log}") from err
            raise
        return part, creds

    def _choose_port(self, name: str, state: State, log) -> int:
        """The port asked for, else the one used last time, else the default, else a free one."""
        if name in self.requested_ports:
            port = self.requested_ports[name] or _free_port()
            _check_port_free(name, port)
            return port
        candidates = {p: why for p, why in ((DEFAULT_PORTS[name], "the default"),
                                            (state.ports.get(name), "used last time")) if p}
        taken = []
        for port, why in reversed(candidates.items()):  # last time's first
            if _port_free(port):
                break
            taken.append(f"{port} ({why})")
        else:
            port = _free_port()
        if taken:
            log(f"{name:7} port {' and '.join(taken)} taken by another process; using {port}")
        return port

    def _start(self, name: str, creds: dict[str, str], state: State, log=print) -> Part:
        port = self._choose_port(name, state, log)
        part = Part(name=name, port=port, log=str(self.logs / f"{name}.log"))
        part.cmd, env = self._command(part, creds, state)
        out = os.open(part.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = subprocess.Popen(
                part.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.dir, start_new_session=True,  # own process group: down stops it whole
                umask=0o077,  # what the servers write (the sqlite registry, its journal) is the owner's only
            )
        finally:
            os.close(out)
        part.pid = proc.pid
        _wait_ready(part, proc)
        return part

    def _command(self, part: Part, creds: dict[str, str], state: State) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
        if part.name == "s3":
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(S3_SETUP_REQUESTS)
            for name in ("MOTO_ENABLE_RECORDING", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.pop(name, None)
            return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(part.port)], env
        env.update({
            "AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
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
            "--backend-store-uri", f"sqlite:///{self.database}",
            "--serve-artifacts", "--artifacts-destination", f"s3://{ARTIFACTS_BUCKET}",
        ]
        return cmd, env

    def _init_gitops(self, log) -> None:
        if self.gitops_repo.exists():
            return
        with _private_umask():
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


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_port_free(name: str, port: int) -> None:
    if not _port_free(port):
        raise StackError(
            f"cannot start {name}: port {port} on 127.0.0.1 is taken by another process; "
            f"stop it or choose another port with --{name}-port"
        )


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


def _stop_part(part: Part) -> str:
    if not _alive(part):
        return "was not running"
    _stop(part)
    return f"stopped (pid {part.pid})"


def _s3_client(url: str, creds: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])


def _provision_s3_key(url: str, seed: int) -> tuple[str, str]:
    """Make the one identity the S3 server accepts: IAM user `mlferry`, allowed s3:*, and its key.

    moto checks no credentials for its first INITIAL_NO_AUTH_ACTION_COUNT requests (the stack
    sets S3_SETUP_REQUESTS) and checks every signature after: these three requests spend them.
    moto cannot import a given key; it makes one from its random generator, which its
    /moto-api/seed seeds first, so the seed kept in secrets.env gives the same key at every start
    and shells that exported it keep working. They are plain form POSTs rather than boto3 calls:
    a boto3 IAM client costs more to build than the three requests take, and unsigned requests
    are what moto accepts here (the Authorization header only tells it which service is meant).
    """
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/seed?a={seed}", method="POST"), timeout=30).close()
    policy = json.dumps({"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    answers = [_iam(url, Action="CreateUser", UserName=S3_USER),
               _iam(url, Action="PutUserPolicy", UserName=S3_USER, PolicyName="s3", PolicyDocument=policy),
               _iam(url, Action="CreateAccessKey", UserName=S3_USER)]
    key = answers[-1].find(".//{*}AccessKey")
    if key is None:
        raise StackError(f"the S3 server at {url} answered CreateAccessKey without a key")
    return key.findtext("{*}AccessKeyId", ""), key.findtext("{*}SecretAccessKey", "")


def _iam(url: str, **params: str) -> ET.Element:
    body = urllib.parse.urlencode({**params, "Version": "2010-05-08"}).encode()
    request = urllib.request.Request(url + "/", data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": "AWS4-HMAC-SHA256 Credential=setup/20000101/us-east-1/iam/aws4_request, "
                         "SignedHeaders=host, Signature=unsigned"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return ET.fromstring(answer.read())
    except urllib.error.HTTPError as err:
        raise StackError(f"the S3 server at {url} refused IAM {params['Action']} while setting up its "
                         f"credentials: HTTP {err.code} {err.read()[:300]!r}") from None


def _check_credentials_enforced(url: str, creds: dict[str, str]) -> None:
    """A wrong secret must be refused, or the stack would hide credential mistakes that a real store rejects."""
    from botocore.exceptions import ClientError

    wrong = _s3_client(url, {**creds, "AWS_SECRET_ACCESS_KEY": "not-" + creds["AWS_SECRET_ACCESS_KEY"]})
    try:
        wrong.list_buckets()
    except ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
            return
        raise
    raise StackError(f"the S3 server at {url} accepted a wrong secret key: it does not check credentials "
                     f"(is INITIAL_NO_AUTH_ACTION_COUNT honoured by this moto?)")


def _create_buckets(client: Any) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACTS_BUCKET, MODELS_BUCKET):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # a file left by an older mlferry keeps its mode through O_TRUNC


@contextlib.contextmanager
def _private_umask():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

"""The local stack: an MLflow server, an S3-compatible server and a GitOps remote on loopback.

It stands in for a team's namespace (MLflow, MinIO, the GitOps repo) so that the same steps
and the same workflow YAML run on one machine. MinIO's server binary is not installable from
the package registries, so the S3 part is moto's standalone server, used through boto3
exactly as MinIO would be.

State lives in one folder (default ``.mlferry/``, mode 700, its files 600): ``stack.json`` (what
``up`` started, so that ``down`` stops exactly that, and the ports it used, reused next time),
``secrets.env`` (generated credentials), ``logs/``, the sqlite registry ``mlflow.db``, the bare
GitOps repo ``gitops.git`` and ``s3/``, the S3 objects as of the last ``down`` (see
mlferry.stack.data). ``down`` keeps all of it, like a docker-compose volume; ``down --purge`` and
``reset`` delete it. With ``up --applier`` a third process runs: the local applier (mlferry.applier),
which runs the GitOps repo's model servers and writes ``applier/status.json``, their logs beside it.

The S3 server checks credentials, as MinIO does: moto accepts any key until told otherwise, so
the stack spends moto's first unauthenticated requests on one IAM user allowed ``s3:*`` and its
key (see mlferry.stack.s3); every later request must be signed with that key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlferry.stack import data
from mlferry.stack import s3 as s3_server
from mlferry.stack.data import private_dir, private_umask, write_private
from mlferry.stack.processes import (Part, StackError, alive, answers, check_port_free, free_port, port_free,
                                     stop, stop_part, wait_ready)
from mlferry.stack.s3 import ARTIFACTS_BUCKET, MODELS_BUCKET
from mlferry.steps.local_status import STATUS_ENV, STATUS_FILE
from mlferry.steps.gitops import Git

__all__ = ["ARTIFACTS_BUCKET", "DEFAULT_DIR", "MODELS_BUCKET", "Stack", "StackError", "init_bare_repo"]

DEFAULT_DIR = ".mlferry"
DEFAULT_PORTS = {"s3": 9050, "mlflow": 5050}
GITOPS_BRANCH = "main"
TEAM = "ml"
S3_KEY_SEED = "MLFERRY_S3_KEY_SEED"  # in secrets.env: moto makes the same key from it at every start


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

    @property
    def applier_status(self) -> Path:
        return self.dir / STATUS_FILE

    # -- public operations -----------------------------------------------------------------
    def up(self, log=print, restore_last_save: bool = False, applier: bool = False) -> dict[str, str]:
        """Start whatever is not running yet, with the data the last `down` kept; return the
        environment that reaches the stack.

        restore_last_save: the S3 server stopped without `down` saving its objects (killed, or
        the machine restarted); start anyway with the objects of the last save.
        applier: also run the local applier in the background (the GitOps repo's model servers)."""
        private_dir(self.dir)
        private_dir(self.logs)
        self._tighten_modes()
        creds = self._secrets()
        state = self._state()
        snapshot = self._check_restorable(state, restore_last_save)
        had_data = self.database.exists() or snapshot is not None
        started = False
        self._init_gitops(log)  # on disk already: what the applier follows, what steps push to
        for name in ("s3", "mlflow") + ("applier",) * applier:
            part = state.parts.get(name)
            if part and alive(part) and answers(part):
                log(f"{name:7} already running at {part.where} (pid {part.pid})")
                continue
            if name == "s3":
                part, creds = self._start_s3(creds, state, snapshot, log)
                state.lost = ""
            else:
                part = self._start(name, creds, state, log)
            state.parts[name] = part
            if part.port:
                state.ports[name] = part.port
            self._write_state(state)
            log(f"{name:7} started at {part.where} (pid {part.pid})")
            started = True
        if had_data and started:
            log(f"kept    {self._kept_summary()} (in {self.dir}; `mlferry stack reset` deletes them)")
        return self.environment()

    def down(self, log=print, purge: bool = False) -> None:
        """Stop exactly what `up` started. The S3 objects are saved to disk first, so that the
        next `up` has them back (the registry and the GitOps repo are on disk already);
        purge=True deletes all the stack's data instead."""
        state = self._state()
        applier = state.parts.get("applier")
        if applier:  # first: it stops the model servers it started, which read from S3
            log(f"applier {stop_part(applier, timeout=30)}")
            del state.parts["applier"]
            self._write_state(state)
        mlflow = state.parts.get("mlflow")
        if mlflow:
            log(f"mlflow  {stop_part(mlflow)}")
            del state.parts["mlflow"]
            self._write_state(state)
        s3 = state.parts.get("s3")
        if s3:
            if alive(s3) and not purge:
                self._save_s3(s3, log)
            elif not alive(s3) and not purge:
                state.lost = f"the S3 server (pid {s3.pid}) stopped without `mlferry stack down` saving its objects"
            log(f"s3      {stop_part(s3)}")
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
        for name in ("mlflow", "s3") + ("applier",) * ("applier" in state.parts):
            part = state.parts.get(name)
            if part is None:
                rows.append((name, "stopped", "-"))
            elif not alive(part):
                rows.append((name, "dead", f"see {part.log}"))
            else:
                rows.append((name, "running" if answers(part) else "starting", part.where))
        rows.append(("gitops", "ready" if self.gitops_repo.exists() else "absent", str(self.gitops_repo)))
        return rows

    def data_summary(self) -> str:
        """Where the data is kept and what the last save holds, for `mlferry stack status`."""
        try:
            snapshot = data.read(self.s3_data)
        except data.SnapshotError as err:
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
            # Where `verify: local` and `mlferry status` read the local applier's reports. Exported
            # whether or not the applier runs yet, so a shell that ran `stack env` before
            # `up --applier` finds it too; with no file, readers say the applier is not running.
            STATUS_ENV: str(self.applier_status),
        }

    # -- keeping data ------------------------------------------------------------------------
    def _check_restorable(self, state: State, restore_last_save: bool) -> data.Snapshot | None:
        """Refuse to start on data that cannot be put back whole, rather than start a registry
        and a GitOps repo that point at objects that are gone. Returns the save to restore."""
        s3 = state.parts.get("s3")
        if s3 and alive(s3):
            return None  # running: its objects are in memory
        mlflow = state.parts.get("mlflow")
        if mlflow and alive(mlflow):
            raise StackError(f"the S3 server of {self.dir} is not running but MLflow is; "
                             "run `mlferry stack down` then `mlferry stack up`")
        if s3 and not state.lost:
            state.lost = f"the S3 server (pid {s3.pid}) stopped without `mlferry stack down` saving its objects"
            del state.parts["s3"]
            self._write_state(state)
        try:
            snapshot = data.read(self.s3_data)
            if snapshot is not None:
                data.verify(self.s3_data, snapshot)
        except data.SnapshotError as err:
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
            snapshot = data.save(s3_server.s3_client(s3.url, self._secrets()), self.s3_data)
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
        snapshot = data.read(self.s3_data)
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
        write_private(tmp, state.to_json())
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
        write_private(tmp, "".join(f"{k}={v}\n" for k, v in creds.items()))
        tmp.replace(self.secrets_file)

    def _start_s3(self, creds: dict[str, str], state: State, snapshot: data.Snapshot | None,
                  log) -> tuple[Part, dict[str, str]]:
        """Start moto, make the key it accepts, put the saved objects back."""
        part = self._start("s3", creds, state, log)
        try:
            key_id, secret = s3_server.provision_s3_key(part.url, int(creds[S3_KEY_SEED]))
            if (creds.get("AWS_ACCESS_KEY_ID"), creds.get("AWS_SECRET_ACCESS_KEY")) != (key_id, secret):
                if creds.get("AWS_ACCESS_KEY_ID"):
                    log(f"s3      the access key changed ({self.secrets_file} has the new one): shells that "
                        "ran `eval \"$(mlferry stack env)\"` must run it again")
                creds = {**creds, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
                self._write_secrets(creds)
            client = s3_server.s3_client(part.url, creds)
            s3_server.check_credentials_enforced(part.url, creds)
            if snapshot is not None:
                data.restore(client, self.s3_data, snapshot)
            s3_server.create_buckets(client)
        except BaseException as err:
            stop(part)
            if isinstance(err, Exception) and not isinstance(err, StackError):
                raise StackError(f"s3 started but could not be set up ({err}); it is stopped again, "
                                 f"see {part.log}") from err
            raise
        return part, creds

    def _choose_port(self, name: str, state: State, log) -> int:
        """The port asked for, else the one used last time, else the default, else a free one."""
        if name in self.requested_ports:
            port = self.requested_ports[name] or free_port()
            check_port_free(name, port)
            return port
        candidates = {p: why for p, why in ((DEFAULT_PORTS[name], "the default"),
                                            (state.ports.get(name), "used last time")) if p}
        taken = []
        for port, why in reversed(candidates.items()):  # last time's first
            if port_free(port):
                break
            taken.append(f"{port} ({why})")
        else:
            port = free_port()
        if taken:
            log(f"{name:7} port {' and '.join(taken)} taken by another process; using {port}")
        return port

    def _start(self, name: str, creds: dict[str, str], state: State, log=print) -> Part:
        if name == "applier":  # no port; ready once it has written its status (a killed one's is stale)
            self.applier_status.unlink(missing_ok=True)
            part = Part(name=name, port=0, log=str(self.logs / f"{name}.log"), ready_file=str(self.applier_status))
        else:
            part = Part(name=name, port=self._choose_port(name, state, log), log=str(self.logs / f"{name}.log"))
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
        wait_ready(part, proc)
        return part

    def _command(self, part: Part, creds: dict[str, str], state: State) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
        if part.name == "applier":  # follows this stack's GitOps repo; Secrets resolve to this stack's key
            env.update(self.environment())
            return [sys.executable, "-m", "mlferry.cli", "applier", "--stack-dir", str(self.dir),
                    "--status-file", str(self.applier_status)], env
        if part.name == "s3":
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(s3_server.SETUP_REQUESTS)
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
        with private_umask():
            init_bare_repo(self.gitops_repo, GITOPS_BRANCH)
        log(f"gitops  bare repo at {self.gitops_repo} (branch {GITOPS_BRANCH})")


def init_bare_repo(path: Path, branch: str) -> None:
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


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

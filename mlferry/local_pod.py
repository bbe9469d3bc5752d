"""A GitOps folder's Deployment as a local process, as a kubelet would run its one container.

Two halves: :func:`pod_spec` turns the folder's manifests into what to run (no I/O: command, env,
port, probe, startup budget), and :class:`Pod` runs it, probes it and stops it.

What a kubelet does and this does too: the container's own `command` + `args` and `env`, Secrets
and ConfigMaps resolved (locally from this machine's environment, as the local executor resolves
them: mlferry.engine.submission.Cluster), a port of its own, the startup probe's budget, an
emptyDir per pod. What differs, and why: `--host`/`--port` are rewritten to 127.0.0.1 and a free
port (a laptop has one network namespace for every pod), the image's `mlflow` is this
interpreter's (`python -m mlflow`), and PATH and the locale come from this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from mlferry.engine.submission import Cluster
from mlferry.stack.processes import Part, stop

DEPLOYMENT_FILE = "deployment.yaml"
KSERVE_FILE = "inferenceservice.yaml"
# A cluster allows a model ten minutes to download and load (the startup probe); a laptop's
# loopback S3 needs far less, and a broken manifest should not take ten minutes to say so.
STARTUP_CAP = 120.0
# What a kubelet would give from the image; everything else comes from the manifest.
_MACHINE_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")
_HOST_FLAGS = ("--host", "-h")
_PORT_FLAGS = ("--port", "-p")


class ManifestError(ValueError):
    """The folder's manifests cannot be run as they are; the message says what a kubelet would say."""


@dataclass(frozen=True)
class PodSpec:
    """What to run for one folder, on this machine."""

    command: tuple[str, ...]
    env: Mapping[str, str]
    port: int  # the local port the server listens on
    probe_path: str  # the startup (else readiness) probe's HTTP path
    startup_budget: float  # seconds the server may take to answer the probe
    scratch: tuple[str, ...] = ()  # the emptyDir folders to create (and delete) with the pod


def deployment_of(files: Mapping[str, str]) -> dict:
    """The folder's Deployment, parsed."""
    try:
        found = yaml.safe_load(files[DEPLOYMENT_FILE])
    except yaml.YAMLError as err:
        raise ManifestError(f"{DEPLOYMENT_FILE} is not valid YAML: {err}") from None
    if not isinstance(found, dict) or found.get("kind") != "Deployment":
        raise ManifestError(f"{DEPLOYMENT_FILE} holds no Deployment")
    return found


def annotation(deployment: Mapping, key: str) -> str:
    return str((deployment.get("metadata") or {}).get("annotations", {}).get(key, ""))


def pod_spec(deployment: Mapping, port: int, scratch: Path, environ: Mapping[str, str]) -> PodSpec:
    """The Deployment's first container, made runnable here on `port`, with emptyDirs under `scratch`."""
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    if not containers:
        raise ManifestError("the Deployment has no container")
    container = containers[0]
    namespace = (deployment.get("metadata") or {}).get("namespace", "default")
    mounts = _empty_dirs(pod, container, scratch)
    # Only the manifest's own values live in the pod's filesystem (HOME=/tmp); this machine's PATH
    # names this machine's folders, even one under /tmp (a checkout in /tmp/…/.venv/bin).
    own = _container_env(container, namespace, Cluster.from_environment(environ))
    env = {**_machine_env(environ), **{name: _remapped(value, mounts) for name, value in own.items()}}
    if "/tmp" in mounts:  # Python's tempfile would otherwise write to this machine's /tmp
        env.setdefault("TMPDIR", mounts["/tmp"])
    command = local_command([*container.get("command", []), *container.get("args", [])], port)
    probe = container.get("startupProbe") or container.get("readinessProbe") or {}
    return PodSpec(command=tuple(command), env=env, port=port, probe_path=_probe_path(probe, container),
                   startup_budget=startup_budget(probe), scratch=tuple(mounts.values()))


def local_command(command: list[str], port: int) -> list[str]:
    """The container's command with --host/--port pointed at loopback and `port`, and `mlflow`
    run by this interpreter (the image's mlflow is the one on its PATH)."""
    if not command:
        raise ManifestError("the container has no command (the local applier cannot run an image's entrypoint)")
    out, rest, found_port = [], list(map(str, command)), False
    if rest[0] == "mlflow":
        out, rest = [sys.executable, "-m", "mlflow"], rest[1:]
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag in _HOST_FLAGS + _PORT_FLAGS:
            new = "127.0.0.1" if flag in _HOST_FLAGS else str(port)
            found_port |= flag in _PORT_FLAGS
            if eq:
                out.append(f"{flag}={new}")
            else:
                out += [flag, new]
                rest = rest[1:]
            continue
        out.append(arg)
    if not found_port:
        raise ManifestError(f"the command {' '.join(command)!r} names no --port: the local applier cannot give it one")
    return out


def startup_budget(probe: Mapping, cap: float = STARTUP_CAP) -> float:
    """periodSeconds × failureThreshold (Kubernetes' defaults 10 × 3), capped for a laptop."""
    period, threshold = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
    return float(min(cap, period * threshold + probe.get("initialDelaySeconds", 0)))


def _probe_path(probe: Mapping, container: Mapping) -> str:
    path = (probe.get("httpGet") or {}).get("path")
    if not path:
        raise ManifestError(f"container {container.get('name', '?')!r} has no HTTP startup or readiness probe: "
                            "the local applier cannot tell when it is ready")
    return path


def _container_env(container: Mapping, namespace: str, cluster: Cluster) -> dict[str, str]:
    env = {}
    for item in container.get("env") or []:
        name, source = item["name"], item.get("valueFrom")
        if source is None:
            env[name] = str(item.get("value", ""))
            continue
        kind, ref = next(((k, source[key]) for key, k in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap"))
                          if key in source), (None, None))
        if kind is None:
            raise ManifestError(f"env {name}: the local applier resolves secretKeyRef and configMapKeyRef only, "
                                f"not {', '.join(source)}")
        try:
            env[name] = cluster.lookup(kind, ref["name"], ref["key"], namespace)
        except LookupError as err:  # what the kubelet reports as CreateContainerConfigError
            raise ManifestError(f"env {name}: {err}") from None
    return env


def _machine_env(environ: Mapping[str, str]) -> dict[str, str]:
    """PATH with this interpreter's folder first (mlflow execs `uvicorn` from PATH), and the locale."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', os.defpath)}"
    return {"PATH": path, **{k: environ[k] for k in _MACHINE_VARIABLES if k in environ}}


def _empty_dirs(pod: Mapping, container: Mapping, scratch: Path) -> dict[str, str]:
    """mountPath → a local folder, for each emptyDir the container mounts (one pod's scratch space)."""
    empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") in empty]
    return {m["mountPath"].rstrip("/") or "/": str(scratch / m["name"]) for m in mounts}


def _remapped(value: str, mounts: Mapping[str, str]) -> str:
    """An env value naming a path inside an emptyDir (HOME=/tmp) names the pod's local folder instead."""
    for mount, local in mounts.items():
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount):]
    return value


# ---------------------------------------------------------------------------------------------
# Running it

HEALTHY, PROGRESSING, DEGRADED = "Healthy", "Progressing", "Degraded"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


@dataclass
class Pod:
    """One running server. `observe` says its health, as Argo CD would say the Deployment's."""

    spec: PodSpec
    log: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    failure: str = ""  # set once it failed: the one line that says why

    @classmethod
    def start(cls, spec: PodSpec, log: Path) -> "Pod":
        log.parent.mkdir(parents=True, exist_ok=True)
        for folder in spec.scratch:
            Path(folder).mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(spec.command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(spec.env), cwd=spec.scratch[0] if spec.scratch else None,
                                    start_new_session=True)  # its own group: stopping it stops its workers too
        return cls(spec, log, proc)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    def observe(self, now: float | None = None) -> tuple[str, str]:
        """(health, one line): Progressing until the probe answers 200, then Healthy; Degraded
        when the process exits or does not answer within the startup budget."""
        now = time.monotonic() if now is None else now
        if self.failure:
            return DEGRADED, self.failure
        code = self.proc.poll()
        if code is not None:
            self.failure = f"the server exited with code {code}: {last_error(self.log)}"
            return DEGRADED, self.failure
        if self.ready or self._answers():
            self.ready = True
            return HEALTHY, f"serving on {self.endpoint}"
        waited = now - self.started
        if waited > self.spec.startup_budget:
            self.stop()
            self.failure = (f"no answer on {self.spec.probe_path} within {self.spec.startup_budget:.0f}s "
                            f"(stopped); last log line: {last_error(self.log)}")
            return DEGRADED, self.failure
        return PROGRESSING, f"starting ({waited:.0f}s): waiting for {self.spec.probe_path} on {self.endpoint}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop(Part(name="model-server", port=self.spec.port, pid=self.proc.pid))
        for folder in self.spec.scratch:
            shutil.rmtree(folder, ignore_errors=True)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + self.spec.probe_path, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


def last_error(log: Path) -> str:
    """The log's last meaningful line: the last Python exception line if any, else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"(no log at {log})"
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    found = exceptions[-1] if exceptions else (lines[-1] if lines else "(the log is empty)")
    return found[:300]

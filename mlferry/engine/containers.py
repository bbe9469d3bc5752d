"""A script or container template made into the process that stands for its pod.

What the kubelet and Argo's executor would set up is set up here: the argv from command and
args with Kubernetes' `$(VAR)` expansion, the environment from env and envFrom (ConfigMaps and
Secrets read from the run's Cluster), the script source as a file appended to the args, and each
output parameter's file, moved from the container's outputs directory to the pod's own folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mlferry.engine.expressions import argo_string, substitute_all
from mlferry.engine.nodes import NodeError
from mlferry.engine.pods import Pod
from mlferry.engine.scope import pod_vars

if TYPE_CHECKING:
    from mlferry.engine.submission import Cluster

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
DEFAULT_OUTPUTS_DIR = "/tmp/hera-outputs"  # Hera's RunnerScriptConstructor default


@dataclass(frozen=True)
class Machine:
    """What every pod of a run starts from on this machine."""

    base_env: Mapping[str, str]
    cluster: "Cluster"
    namespace: str
    cwd: Path
    python: str  # the interpreter that stands for the image's `python`


def build_pod(name: str, t: Mapping[str, Any], scope: Mapping[str, str], machine: Machine, *,
              pod_name: str, node_name: str, attempt: int, pod_dir: Path, log: Path) -> tuple[Pod, dict[str, str]]:
    """The process for one attempt of leaf template `t`, and the scope it was built in."""
    kind = "script" if "script" in t else "container"
    outputs = output_files(t, kind, pod_dir / "outputs")
    scope = {**scope, **pod_vars(pod_name=pod_name, node_name=node_name, retries=attempt,
                                 output_paths={k: str(path) for k, (path, _d) in outputs.items()})}
    body = substitute_all(dict(t[kind]), scope)
    defined = container_vars(body, machine)
    # hera__outputs_directory: where the Hera runner writes outputs, this pod's own folder
    env = {**machine.base_env, **defined, "hera__outputs_directory": str(pod_dir / "outputs")}
    argv = [_expand(a, defined) for a in [*body["command"], *body.get("args", [])]]
    # The image's Python is this machine's interpreter: the environment where the steps are installed.
    argv[0] = machine.python if _PYTHON.match(Path(argv[0]).name) else argv[0]
    script = None
    if kind == "script":  # Argo writes the source to a file and appends its path to the args
        script = (pod_dir / "script", body["source"])
        argv.append(str(script[0]))
    return Pod(name, argv, env, machine.cwd, log, outputs, script), scope


def container_outputs_dir(body: Mapping[str, Any]) -> str:
    """Where a Hera runner script writes its outputs inside the container (RunnerScriptConstructor)."""
    for env in body.get("env") or []:
        if isinstance(env, dict) and env.get("name") == "hera__outputs_directory" and "value" in env:
            return str(env["value"]).rstrip("/")
    return DEFAULT_OUTPUTS_DIR


def output_files(t: Mapping[str, Any], kind: str, local_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """Each output parameter's file, moved from the container's outputs directory to this pod's."""
    container_dir = container_outputs_dir(t[kind])
    out = {}
    for p in (t.get("outputs") or {}).get("parameters") or []:
        relative = str(p["valueFrom"]["path"])[len(container_dir) + 1:]
        default = p["valueFrom"].get("default")
        out[p["name"]] = (local_dir / relative, None if default is None else argo_string(default))
    return out


def container_vars(body: Mapping[str, Any], machine: Machine) -> dict[str, str]:
    """The container's own variables: envFrom, then env (env wins, as in Kubernetes)."""
    defined: dict[str, str] = {}
    try:
        for source in body.get("envFrom") or []:
            defined.update(_env_from(source, machine.cluster))
        for var in body.get("env") or []:
            value = _env_value(var, defined, machine)
            if value is not None:
                defined[var["name"]] = value
    except LookupError as err:
        raise NodeError(f"CreateContainerConfigError: {err}") from None
    return defined


def _env_from(source: Mapping[str, Any], cluster: "Cluster") -> dict[str, str]:
    for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
        if key in source:
            ref = source[key]
            objects = cluster.config_maps if kind == "ConfigMap" else cluster.secrets
            if ref["name"] not in objects:
                if ref.get("optional"):
                    return {}
                raise LookupError(f"{kind.lower()} \"{ref['name']}\" not found")
            return {source.get("prefix", "") + k: v for k, v in objects[ref["name"]].items()}
    return {}


def _env_value(var: Mapping[str, Any], defined: Mapping[str, str], machine: Machine) -> str | None:
    if "valueFrom" not in var:
        return _expand(str(var.get("value", "")), defined)
    for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        ref = var["valueFrom"].get(key)
        if ref is not None:
            try:
                return machine.cluster.lookup(kind, ref["name"], ref["key"], machine.namespace)
            except LookupError:
                if ref.get("optional"):
                    return None
                raise
    return None


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ is a literal $."""
    return _K8S_VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)

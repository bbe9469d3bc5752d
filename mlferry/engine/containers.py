"""A script or container template's container, as the engine reads it (more comes with the pod code)."""

from __future__ import annotations

from typing import Any, Mapping

DEFAULT_OUTPUTS_DIR = "/tmp/hera-outputs"  # Hera's RunnerScriptConstructor default


def container_outputs_dir(body: Mapping[str, Any]) -> str:
    """Where a Hera runner script writes its outputs inside the container (RunnerScriptConstructor)."""
    for env in body.get("env") or []:
        if isinstance(env, dict) and env.get("name") == "hera__outputs_directory" and "value" in env:
            return str(env["value"]).rstrip("/")
    return DEFAULT_OUTPUTS_DIR

"""Every pod mlferry makes fits a namespace that enforces Pod Security "restricted"
(kubernetes.io/docs/concepts/security/pod-security-standards): the step pods of the generated
workflows and the model servers of both runtimes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mlferry.generate import GENERATED_DIR
from tests.test_render import make_input, make_settings

from mlferry.steps.render import render_folder


def restricted_violations(pod: dict[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """What "restricted" refuses: root allowed, no seccomp profile, escalation, capabilities kept."""
    found = []
    pod_context = pod.get("securityContext") or {}
    for container in containers:
        context = container.get("securityContext") or {}
        name = container.get("name", "?")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no RuntimeDefault seccomp profile")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            found.append(f"{name}: capabilities are not all dropped")
    return found


def test_every_step_pod_of_the_generated_workflows_is_restricted():
    checked = 0
    for path in sorted(GENERATED_DIR.glob("*workflowtemplate*.yaml")):
        spec = yaml.safe_load(path.read_text())["spec"]
        for template in spec["templates"]:
            body = template.get("script") or template.get("container")
            if body:
                checked += 1
                assert restricted_violations(spec, [{**body, "name": template["name"]}]) == [], path.name
    assert checked >= 8


@pytest.mark.parametrize("runtime", ["deployment", "kserve"])
def test_the_model_servers_are_restricted(runtime):
    rendered = render_folder(make_input(), make_settings(runtime))
    if runtime == "deployment":
        pod = yaml.safe_load(rendered.files["deployment.yaml"])["spec"]["template"]["spec"]
        containers = pod["containers"] + pod.get("initContainers", [])
    else:
        pod = yaml.safe_load(rendered.files["inferenceservice.yaml"])["spec"]["predictor"]
        containers = [{**pod["model"], "name": "kserve-container"}]
    assert restricted_violations(pod, containers) == []

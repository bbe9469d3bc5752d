"""report: write the outcome back onto the model version, where data scientists look.

Tags only (`mlferry.<env>.status|commit|uri|error|at`): MLflow fires no alias webhook for tag
writes, so reporting can never trigger another promotion.
"""


from datetime import datetime, timezone
from typing import Literal

from hera.workflows import Input, Output

from steps import registry
from steps.outcome import as_argo_step
from steps.naming import check_environment_name

Status = Literal["committed", "removed", "failed"]
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value


class ReportInput(Input):
    model: str
    version: str
    env: str
    status: Status = "committed"
    commit: str = ""
    uri: str = ""
    message: str = ""


class Report(Output):
    tags: dict[str, str] = {}


@as_argo_step
def report(inputs: ReportInput) -> Report:
    tags = outcome_tags(inputs, datetime.now(timezone.utc))
    registry.set_version_tags(registry.client(), inputs.model, inputs.version, tags)
    return Report(tags=tags)


def outcome_tags(inputs: ReportInput, now: datetime) -> dict[str, str]:
    env = check_environment_name(inputs.env)
    tags = {f"mlferry.{env}.status": inputs.status, f"mlferry.{env}.at": now.isoformat(timespec="seconds")}
    if inputs.commit:
        tags[f"mlferry.{env}.commit"] = inputs.commit
    if inputs.uri:
        tags[f"mlferry.{env}.uri"] = inputs.uri
    # A stale error from an earlier failed try would mislead; clear it on success.
    tags[f"mlferry.{env}.error"] = inputs.message[:MAX_TAG_VALUE] if inputs.status == "failed" else ""
    return tags

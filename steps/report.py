"""report: write the outcome back onto the model version, where data scientists look.

Tags only (`mlferry.<env>.status|commit|uri|error|at`): MLflow fires no alias webhook for tag
writes, so reporting can never trigger another promotion.
"""


import logging
from datetime import datetime, timezone
from typing import Literal

from hera.workflows import Input, Output

from mlferry.steps import registry
from mlferry.steps.outcome import as_argo_step, readable_failures
from mlferry.steps.naming import check_environment_name

log = logging.getLogger(__name__)
Status = Literal["committed", "removed", "failed"]
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value


class ReportInput(Input):
    model: str
    version: str = ""
    alias: str = ""  # a failure before resolve knows only the alias; the version is looked up
    stage: str = ""
    env: str
    status: Status = "committed"
    commit: str = ""
    uri: str = ""
    message: str = ""
    failures: str = ""  # Argo's {{workflow.failures}}, from the exit handler


class Report(Output):
    tags: dict[str, str] = {}


@as_argo_step
def report(inputs: ReportInput) -> Report:
    mlflow = registry.client()
    if inputs.failures and not inputs.message:
        inputs = inputs.model_copy(update={"message": readable_failures(inputs.failures)})
    try:
        version = inputs.version or registry.find_version(mlflow, inputs.model, alias=inputs.alias,
                                                          stage=inputs.stage).version
    except (registry.RegistryError, ValueError) as err:
        if inputs.status != "failed":
            raise
        # The failure was the registry lookup itself: there is no version to put the tag on.
        log.warning("not tagging the failure on the registry: %s", err)
        return Report()
    tags = outcome_tags(inputs, datetime.now(timezone.utc))
    registry.set_version_tags(mlflow, inputs.model, str(version), tags)
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

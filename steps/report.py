"""report: write the outcome back onto the model version, where data scientists look.

Tags only (`mlferry.<env>.status|commit|uri|error|at`): MLflow fires no alias webhook for tag
writes, so reporting can never trigger another promotion.
"""


import logging
import os
from datetime import datetime, timezone
from typing import Literal

from hera.workflows import Input, Output

from mlferry.steps import registry
from mlferry.steps.mlflow_api import MlflowApi, MlflowApiError, MlflowUnreachable
from mlferry.steps.outcome import as_argo_step, failed_steps, failure_types, readable_failures
from mlferry.steps.naming import check_environment_name

log = logging.getLogger(__name__)
Status = Literal["committed", "removed", "failed"]
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value
ONE_QUICK_TRY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


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


# The step that checks a webhook event's signature. When it failed, nothing about the event can be
# trusted, not the model it names nor the words it carries: the report writes nothing.
VERIFY_STEP = "verify-event"


@as_argo_step
def report(inputs: ReportInput) -> Report:
    if inputs.status == "failed" and VERIFY_STEP in failed_steps(inputs.failures):
        log.warning("the webhook event was rejected by %s: nothing is written to the registry", VERIFY_STEP)
        return Report()
    if inputs.failures and not inputs.message:
        inputs = inputs.model_copy(update={"message": readable_failures(inputs.failures)})
    mlflow_down = inputs.status == "failed" and MlflowUnreachable.__name__ in failure_types(inputs.failures)
    # The run failed because MLflow did not answer: try once, quickly, rather than wait again for the
    # server that just failed (the caller has waited through the step's retries already).
    mlflow = MlflowApi.from_env({**os.environ, **ONE_QUICK_TRY}) if mlflow_down else registry.client()
    try:
        version = inputs.version or registry.find_version(mlflow, inputs.model, alias=inputs.alias,
                                                          stage=inputs.stage).version
        tags = outcome_tags(inputs, datetime.now(timezone.utc))
        registry.set_version_tags(mlflow, inputs.model, str(version), tags)
    except (registry.RegistryError, ValueError, MlflowApiError, MlflowUnreachable) as err:
        if not (inputs.status == "failed" and _nothing_to_tag(err, mlflow_down)):
            raise
        log.warning("not tagging the failure on the registry: %s", err)
        return Report()
    return Report(tags=tags)


def _nothing_to_tag(err: Exception, mlflow_down: bool) -> bool:
    """A failed run's report may find nothing to tag: the lookup that failed the run fails again
    (no such model, alias or version: there is no version to put the tag on), or MLflow, whose
    silence failed the run, still does not answer."""
    if isinstance(err, MlflowUnreachable):
        return mlflow_down
    if isinstance(err, MlflowApiError):
        return err.status == 404
    return True  # RegistryError, ValueError


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

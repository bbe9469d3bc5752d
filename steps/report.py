"""report: write the outcome back onto the model version, where data scientists look.

Tags only (`mlferry.<env>.status|commit|uri|reason|error|at`): MLflow fires no alias webhook for
tag writes, so reporting can never trigger another promotion. `mlferry.<env>.status` is one of

- `deployed`: the environment's folder holds this version, as the rule selects it;
- `held`: the folder holds this version under a hold (`reason` says whose and why);
- `superseded`: it was deployed there, and another version replaced it (or, before its run could
  commit, the rule came to select another version, whose own run deploys it);
- `retired`: its folder was removed (nothing selects a version for the environment any more);
- `blocked`: the rule selects it, but a hold keeps the folder at another version;
- `failed`: the promotion failed (`error`: the failing step's own line).

`commit` and `uri` are only ever those of this version's own commit: a failure clears them.
`mlferry.<env>.verified` says how the deployed version was verified (steps/verify.py): `verified`
(it answered its own input example), `health-only` (it has none), `skipped` or `failed`.
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
from mlferry.steps.trailers import one_line
from mlferry.steps.verify import GIVE_UP_STEP

log = logging.getLogger(__name__)
Status = Literal["", "deployed", "held", "superseded", "retired", "blocked", "failed"]
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value
ONE_QUICK_TRY = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class ReportInput(Input):
    model: str
    version: str = ""
    alias: str = ""  # a failure before resolve knows only the alias; the version is looked up
    stage: str = ""
    env: str
    status: Status = ""  # "": from the promotion's outcome (hold, blocked)
    hold: str = ""  # the hold the promotion recorded (resolve's output)
    blocked: str = ""  # the hold that kept this version out (commit's output)
    overtaken: str = ""  # what the rule selected by commit time instead of this version (commit's output)
    previous: str = ""  # the version the folder held before: superseded when it is another
    commit: str = ""
    uri: str = ""
    message: str = ""
    failures: str = ""  # Argo's {{workflow.failures}}, from the exit handler
    verified: str = ""  # the verify step's outcome: verified | health-only | skipped | failed


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
    # A failed verification (its run ends in give-up) was tagged by the run's own report; after a
    # rollback the alias names the restored version, which must not be tagged failed.
    if inputs.status == "failed" and GIVE_UP_STEP in failed_steps(inputs.failures):
        log.info("the failed verification was reported by the run itself: nothing more to tag")
        return Report()
    if inputs.failures and not inputs.message:
        inputs = inputs.model_copy(update={"message": readable_failures(inputs.failures)})
    try:
        return Report(tags=write_tags(inputs))
    except (registry.RegistryError, ValueError, MlflowApiError, MlflowUnreachable) as err:
        if not (inputs.status == "failed" and _nothing_to_tag(err, _mlflow_down(inputs))):
            raise
        log.warning("not tagging the failure on the registry: %s", err)
        return Report()


def _mlflow_down(inputs: ReportInput) -> bool:
    return inputs.status == "failed" and MlflowUnreachable.__name__ in failure_types(inputs.failures)


def write_tags(inputs: ReportInput) -> dict[str, str]:
    """Tag the version with the outcome, and the version it replaced as superseded."""
    # The run failed because MLflow did not answer: try once, quickly, rather than wait again for the
    # server that just failed (the caller has waited through the step's retries already).
    mlflow = MlflowApi.from_env({**os.environ, **ONE_QUICK_TRY}) if _mlflow_down(inputs) else registry.client()
    version = inputs.version or registry.find_version(mlflow, inputs.model, alias=inputs.alias,
                                                      stage=inputs.stage).version
    now = datetime.now(timezone.utc)
    tags = outcome_tags(inputs, now)
    registry.set_version_tags(mlflow, inputs.model, str(version), tags)
    stale = [key for key in ("commit", "uri") if inputs.status == "failed" and not getattr(inputs, key)]
    registry.delete_version_tags(mlflow, inputs.model, str(version), [f"mlferry.{inputs.env}.{k}" for k in stale])
    if inputs.previous and inputs.previous != str(version) and status_of(inputs) in ("deployed", "held"):
        replaced = ReportInput(model=inputs.model, version=inputs.previous, env=inputs.env, status="superseded",
                               message=f"replaced by v{version} in {inputs.commit[:12] or 'git'}")
        registry.set_version_tags(mlflow, inputs.model, inputs.previous, outcome_tags(replaced, now))
    return tags


def status_of(inputs: ReportInput) -> str:
    if inputs.status:
        return inputs.status
    if inputs.verified == "failed":
        return "failed"
    if inputs.overtaken:
        return "superseded"
    return "blocked" if inputs.blocked else "held" if inputs.hold else "deployed"


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
    status = status_of(inputs)
    tags = {f"mlferry.{env}.status": status, f"mlferry.{env}.at": now.isoformat(timespec="seconds")}
    if inputs.commit and status != "blocked":
        tags[f"mlferry.{env}.commit"] = inputs.commit
    if inputs.uri and status in ("deployed", "held"):
        tags[f"mlferry.{env}.uri"] = inputs.uri
    reason = {"held": inputs.hold, "blocked": f"held at v{inputs.previous}: {inputs.blocked}; "
                                              "`mlferry release` ends the hold",
              "superseded": inputs.overtaken and f"not deployed: the rule selected {inputs.overtaken} "
                                                 "before this run could commit"}.get(status, "")
    tags[f"mlferry.{env}.reason"] = one_line(reason or (inputs.message if status in ("superseded", "retired") else ""))
    if inputs.verified:
        tags[f"mlferry.{env}.verified"] = inputs.verified
    # A stale error from an earlier failed try would mislead; clear it on success.
    tags[f"mlferry.{env}.error"] = one_line(inputs.message, MAX_TAG_VALUE) if status == "failed" else ""
    return tags

"""verify: a promotion ends when the new version runs and answers like a model should.

After `commit`, the step waits until the environment runs what was committed (its status source,
steps/deploy_status.py: the Argo CD Application on a cluster, the local applier on a laptop,
reports the commit, or a later one, Synced and Healthy), then smoke-tests the model server with
the model's own data: MLflow's `serving_input_example.json`, logged beside MLmodel when the model
was logged with an input example, is POSTed to `/invocations`, and the answer is checked against
the output signature (one prediction per input row, the signature's types, nothing NaN or
infinite). A model without an input example is verified on health alone, and its tags say so.

The step fails only when it cannot ask (the status source or the registry does not answer: that is
transient, and retried). A verification that fails is an outcome: `outcome=failed` and one line of
`reason`, and the workflow restores what the environment's `on_failure` says (workflows/promote.py),
then ends failed through `give-up`, with one line that says what failed and what was restored.
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.

import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from hera.workflows import Input, Output

from mlferry.steps.deploy_status import DeployStatus, StatusSource, status_source
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import Settings, load_settings
from mlferry.steps.trailers import one_line

log = logging.getLogger(__name__)

INPUT_EXAMPLE = "serving_input_example.json"  # MLflow's name for it (MLmodel saved_input_example_info)
POLL_SECONDS = 2.0
PROGRESS_SECONDS = 15.0
REQUEST_TIMEOUT = 30.0

VERIFIED, HEALTH_ONLY, SKIPPED, FAILED = "verified", "health-only", "skipped", "failed"


class VerifyInput(Input):
    model: str
    version: str
    env: str
    folder: str
    commit: str  # the commit that put this version in the folder (or the head, when it was already there)
    source_uri: str = ""  # the version's artifacts, where the input example is read from
    previous: str = ""  # the version the folder held before, which a failure restores
    signature: dict[str, Any] = {}  # resolve's parsed MLmodel signature
    blocked: str = ""  # commit's outputs: a held folder or a decision overtaken committed nothing,
    overtaken: str = ""  # so there is nothing of this version to verify


class Verification(Output):
    outcome: str  # verified | health-only | skipped | failed
    reason: str = ""  # one line: what failed, or how it was verified
    restore: str = ""  # when failed: rollback | hold | none (the environment's on_failure)
    hold: str = ""  # the hold reason a `hold` restore records
    endpoint: str = ""


class VerificationFailed(Exception):
    """The new version does not run, or does not answer like a model should (an outcome)."""


@as_argo_step
def verify(inputs: VerifyInput) -> Verification:
    settings = load_settings()
    if inputs.blocked or inputs.overtaken:
        return Verification(outcome=SKIPPED, reason="nothing of this version was committed")
    source = status_source(settings)
    if source is None:
        return Verification(outcome=SKIPPED, reason="verification is off (settings: verify)")
    return verify_version(inputs, settings, source, contains=_contains(settings))


def verify_version(inputs: VerifyInput, settings: Settings, source: StatusSource, *,
                   contains: Callable[[str, str], bool], sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> Verification:
    """Wait for the environment, then smoke-test it; a failure is an outcome, not an exception."""
    deadline = settings.environment(inputs.env).verify_timeout
    try:
        status = wait_until_running(source, inputs.folder, inputs.commit, deadline, contains=contains,
                                    sleep=sleep, clock=clock)
        example = read_input_example(inputs.source_uri)
        if example is None:
            log.info("%s v%s runs in %s; the model has no %s, so it is verified on health alone",
                     inputs.model, inputs.version, inputs.env, INPUT_EXAMPLE)
            return Verification(outcome=HEALTH_ONLY, endpoint=status.endpoint,
                                reason=f"healthy at {inputs.commit[:12]}; no input example was logged with the model")
        answer = invoke(status.endpoint, example)
        check_answer(answer, example, inputs.signature)
    except VerificationFailed as failed:
        restore = settings.on_failure(inputs.env)
        if not inputs.previous or inputs.previous == inputs.version:
            restore = "none"  # no version before this one to go back to
        reason = one_line(str(failed))  # one line, and no `{{` for Argo to substitute (trailers.one_line)
        log.error("v%s of %s failed verification in %s: %s (on_failure: %s)", inputs.version, inputs.model,
                  inputs.env, reason, restore)
        hold = f"v{inputs.version} failed verification: {reason}" if restore == "hold" else ""
        return Verification(outcome=FAILED, reason=reason, restore=restore, hold=one_line(hold))
    log.info("%s v%s answers in %s: %s", inputs.model, inputs.version, inputs.env, summary(answer))
    return Verification(outcome=VERIFIED, endpoint=status.endpoint,
                        reason=f"answered its input example at {inputs.commit[:12]}: {summary(answer)}")


# ---------------------------------------------------------------------------------------------
# waiting for the environment


def wait_until_running(source: StatusSource, folder: str, commit: str, deadline: float, *,
                       contains: Callable[[str, str], bool], sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic) -> DeployStatus:
    """The environment's status once it runs `commit` (or a later one), Synced and Healthy."""
    start = last_said = clock()
    while True:
        status = source.read(folder)
        # Asked only of a settled status: whether the revision holds the commit may take git a clone.
        if (status.running or status.failed) and status.revision and (
                status.revision == commit or contains(commit, status.revision)):
            if status.running:
                log.info("%s runs %s (%s, %s)", folder, status.revision[:12], status.sync, status.health)
                return status
            raise VerificationFailed(f"{folder} is {status.health} at {status.revision[:12]}: "
                                     f"{status.message or 'no message'} ({source.name})")
        waited = clock() - start
        if waited >= deadline:
            raise VerificationFailed(f"{folder} did not run {commit[:12]} within {deadline:.0f} s: last seen "
                                     f"{describe(status)} ({source.name})")
        if clock() - last_said >= PROGRESS_SECONDS:
            log.info("waiting for %s to run %s: %s (%.0f s of %.0f)", folder, commit[:12], describe(status),
                     waited, deadline)
            last_said = clock()
        sleep(POLL_SECONDS)


def describe(status: DeployStatus) -> str:
    at = status.revision[:12] or "no revision"
    return f"{status.sync}/{status.health} at {at}" + (f": {status.message}" if status.message else "")


# ---------------------------------------------------------------------------------------------
# the smoke test


def read_input_example(source_uri: str) -> dict | None:
    """MLflow's serving input example of the version, or None when none was logged."""
    from mlferry.steps.artifacts import open_source

    if not source_uri:
        return None
    source = open_source(source_uri)
    # "No example" only on the evidence of a successful listing: MLflow's artifact proxy answers a
    # missing file with HTTP 500, which reads as a server that failed (transient, retried).
    if INPUT_EXAMPLE not in {file.path for file in source.files()}:
        return None
    with source.fetch(INPUT_EXAMPLE) as path:
        text = path.read_text()
    try:
        example = json.loads(text)
    except json.JSONDecodeError as err:
        raise VerificationFailed(f"{INPUT_EXAMPLE} of the version is not JSON: {err}") from None
    if not isinstance(example, dict):
        raise VerificationFailed(f"{INPUT_EXAMPLE} of the version is not a JSON object")
    return example


def invoke(endpoint: str, example: dict, timeout: float = REQUEST_TIMEOUT) -> Any:
    """POST the example to the server's /invocations; its JSON answer."""
    if not endpoint:
        raise VerificationFailed("the status source knows no address of the model server to smoke-test")
    url = endpoint.rstrip("/") + "/invocations"
    request = urllib.request.Request(url, data=json.dumps(example).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        detail = one_line(err.read().decode("utf-8", "replace"), 300)
        raise VerificationFailed(f"the model server answered its input example with HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise VerificationFailed(f"the model server at {endpoint} did not answer: {getattr(err, 'reason', err)}") from None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise VerificationFailed(f"the model server's answer is not JSON: {one_line(body.decode('utf-8', 'replace'), 200)}") from None


def check_answer(answer: Any, example: dict, signature: dict[str, Any]) -> None:
    """One prediction per input row, of the output signature's types, every number finite."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if predictions is None:
        raise VerificationFailed("the model server's answer has no predictions")
    rows = input_rows(example)
    columns = predictions.values() if isinstance(predictions, dict) else [predictions]
    for column in columns:
        if not isinstance(column, list) or not column:
            raise VerificationFailed(f"the predictions are {type(column).__name__}, not a non-empty list")
        if rows is not None and len(column) != rows:
            raise VerificationFailed(f"{len(column)} predictions for {rows} input rows")
    kinds = output_kinds(signature)
    for value in scalars(predictions):
        check_scalar(value, kinds)


def input_rows(example: dict) -> int | None:
    """How many rows the example holds, for the shapes MLflow's scoring server takes."""
    if isinstance(example.get("dataframe_split"), dict):
        return len(example["dataframe_split"].get("data") or [])
    for key in ("dataframe_records", "instances", "inputs"):
        if isinstance(example.get(key), list):
            return len(example[key])
    return None


NUMERIC = {"double", "float", "long", "integer", "float64", "float32", "int64", "int32", "int16", "int8",
           "uint8", "uint16", "uint32", "uint64", "float16"}


def output_kinds(signature: dict[str, Any]) -> set[str]:
    """'number', 'string' or 'boolean' for each output of the signature (empty: no signature)."""
    kinds = set()
    for spec in signature.get("outputs") or []:
        if not isinstance(spec, dict):
            continue
        kind = str((spec.get("tensor-spec") or {}).get("dtype") or spec.get("type") or "")
        kinds.add("number" if kind in NUMERIC else "string" if kind in ("string", "str", "object") else
                  "boolean" if kind in ("boolean", "bool") else "any")
    return kinds


def scalars(value: Any):
    if isinstance(value, dict):
        for item in value.values():
            yield from scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from scalars(item)
    else:
        yield value


def check_scalar(value: Any, kinds: set[str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise VerificationFailed(f"a prediction is {value}: the model answers garbage for its own input example")
    if value is None:
        raise VerificationFailed("a prediction is null")
    if kinds == {"number"} and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise VerificationFailed(f"a prediction is {value!r}, but the output signature says numbers")
    if kinds == {"string"} and not isinstance(value, str):
        raise VerificationFailed(f"a prediction is {value!r}, but the output signature says strings")


def summary(answer: Any) -> str:
    predictions = answer.get("predictions") if isinstance(answer, dict) else answer
    values = list(scalars(predictions))
    shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else repr(v) for v in values[:3])
    return f"{len(values)} prediction{'s' * (len(values) != 1)} ({shown}{', …' if len(values) > 3 else ''})"


# ---------------------------------------------------------------------------------------------
# the edge: git's answer to "is this commit in that one"


def _contains(settings: Settings) -> Callable[[str, str], bool]:
    """Whether `commit` is an ancestor of `revision` on the GitOps branch (a blobless clone, once)."""
    from mlferry.steps import gitops

    known: dict[tuple[str, str], bool] = {}

    def contains(commit: str, revision: str) -> bool:
        if (commit, revision) not in known:
            with gitops.clone_history(settings.require_gitops_repo(), settings.gitops_branch) as history:
                known[(commit, revision)] = (history.has(revision) and history.has(commit) and
                                             history.git.succeeds("merge-base", "--is-ancestor", commit, revision))
        return known[(commit, revision)]

    return contains


class GiveUpInput(Input):
    model: str
    version: str
    env: str
    reason: str
    restore: str = ""
    previous: str = ""


class GaveUp(Output):
    pass


# A failed verification's run ends in this step. Its one line is the run's failure, and the
# exit handler's report and notify read it back (parse_give_up): this module owns its wording.
GIVE_UP_STEP = "give-up"
_GIVE_UP_LINE = re.compile(r"^v(?P<version>\S+) of .+? failed verification in \S+: (?P<failed>.+); "
                           r"(?:restored (?P<restored>.+)|nothing restored.*)$")


def give_up_line(inputs: GiveUpInput) -> str:
    restored = {"rollback": f"restored v{inputs.previous} (the alias moved back)",
                "hold": f"restored v{inputs.previous}, held there"}.get(inputs.restore, "")
    return (f"v{inputs.version} of {inputs.model} failed verification in {inputs.env}: "
            f"{inputs.reason}; {restored or 'nothing restored (on_failure: none)'}")


def parse_give_up(line: str) -> tuple[str, str, str] | None:
    """(version, what failed, what was restored or "") from give_up_line's words; None for other words."""
    said = _GIVE_UP_LINE.match(line)
    return (said["version"], said["failed"], said["restored"] or "") if said else None


@as_argo_step
def give_up(inputs: GiveUpInput) -> GaveUp:
    """The last task of a failed verification: end the run failed, with one line of what happened."""
    raise VerificationFailed(give_up_line(inputs))

"""The verify step's own logic: waiting on a status source, smoke-testing over real HTTP, and what
a failure decides. The loop with a real applier and model server is in tests/test_verify_loop.py."""

from __future__ import annotations

import json

import pytest

from mlferry.steps.deploy_status import DeployStatus
from mlferry.steps.settings import EnvironmentSettings, Settings
from mlferry.steps.verify import (FAILED, HEALTH_ONLY, VERIFIED, GiveUpInput, VerificationFailed, VerifyInput,
                                  check_answer, give_up, invoke, verify_version, wait_until_running)
from tests.loopback import LoopbackServer, QuietHandler

COMMIT, LATER = "a" * 40, "b" * 40
SIGNATURE = {"inputs": [{"type": "double", "name": "x"}], "outputs": [{"type": "tensor", "tensor-spec":
                                                                        {"dtype": "float64", "shape": [-1]}}]}
EXAMPLE = {"dataframe_split": {"columns": ["x"], "data": [[1.0], [2.0]]}}


class Script:
    """A status source that answers what the test scripts, one answer per read (the last repeats)."""

    name = "scripted"

    def __init__(self, *answers: DeployStatus):
        self.answers, self.reads = list(answers), 0

    def read(self, folder: str) -> DeployStatus:
        self.reads += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait(source, commit=COMMIT, deadline=60.0, contains=lambda c, r: False):
    clock = Clock()
    return wait_until_running(source, "teams/ml/m/production", commit, deadline, contains=contains,
                              sleep=clock.sleep, clock=clock)


def test_waits_through_out_of_sync_and_progressing_until_healthy_at_the_commit():
    source = Script(DeployStatus(revision="0" * 40, sync="Synced", health="Healthy"),  # the old version
                    DeployStatus(revision=COMMIT, sync="OutOfSync", health="Healthy"),
                    DeployStatus(revision=COMMIT, sync="Synced", health="Progressing"),
                    DeployStatus(revision=COMMIT, sync="Synced", health="Healthy", endpoint="http://x"))
    assert wait(source).endpoint == "http://x" and source.reads == 4


def test_a_later_revision_that_holds_the_commit_counts_and_one_that_does_not_is_waited_out():
    later = DeployStatus(revision=LATER, sync="Synced", health="Healthy")
    assert wait(Script(later), contains=lambda commit, revision: (commit, revision) == (COMMIT, LATER)) == later
    with pytest.raises(VerificationFailed, match="did not run aaaaaaaaaaaa within 60 s: last seen Synced/Healthy at bbbb"):
        wait(Script(later))


def test_degraded_at_the_commit_fails_at_once_with_the_sources_message():
    source = Script(DeployStatus(revision=COMMIT, sync="Synced", health="Degraded",
                                 message="ModuleNotFoundError: No module named 'xgboost'"))
    with pytest.raises(VerificationFailed, match="Degraded at aaaaaaaaaaaa: ModuleNotFoundError"):
        wait(source)
    assert source.reads == 1


class ModelServer(QuietHandler):
    """A real HTTP server on loopback that answers /invocations with what the test sets."""

    answer: tuple[int, bytes] = (200, b"{}")

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(*type(self).answer)


@pytest.fixture
def server():
    with LoopbackServer(ModelServer) as running:
        yield running.url


@pytest.mark.parametrize("answer,error", [
    ({"predictions": [0.27, 0.29]}, None),
    ({"predictions": [0.27, float("nan")]}, "a prediction is nan"),
    ({"predictions": [0.27]}, "1 predictions for 2 input rows"),
    ({"predictions": ["x", "y"]}, "output signature says numbers"),
    ({"error_code": "BAD_REQUEST"}, "has no predictions"),
])
def test_the_answer_is_checked_against_the_output_signature(server, answer, error):
    ModelServer.answer = (200, json.dumps(answer).encode())
    got = invoke(server, EXAMPLE)
    if error is None:
        check_answer(got, EXAMPLE, SIGNATURE)
    else:
        with pytest.raises(VerificationFailed, match=error):
            check_answer(got, EXAMPLE, SIGNATURE)


def test_a_server_error_is_a_failed_verification_with_its_words(server):
    ModelServer.answer = (500, b'{"error_code": "INTERNAL_ERROR", "message": "could not convert string"}')
    with pytest.raises(VerificationFailed, match="HTTP 500: .*could not convert string"):
        invoke(server, EXAMPLE)
    with pytest.raises(VerificationFailed, match="did not answer"):
        invoke("http://127.0.0.1:9", EXAMPLE, timeout=2)


def settings(**production) -> Settings:
    return Settings(environments={"staging": EnvironmentSettings(aliases=["staging"]),
                                  "production": EnvironmentSettings(aliases=["production"], **production)})


def inputs(**changes) -> VerifyInput:
    return VerifyInput(**{"model": "m", "version": "3", "env": "production", "folder": "teams/ml/m/production",
                          "commit": COMMIT, "previous": "2", "signature": SIGNATURE, **changes})


def test_a_failure_restores_what_the_environment_says(monkeypatch):
    degraded = Script(DeployStatus(revision=COMMIT, sync="Synced", health="Degraded", message="boom {{x}}"))
    found = verify_version(inputs(), settings(), degraded, contains=lambda c, r: False)
    assert (found.outcome, found.restore) == (FAILED, "rollback")  # production's default
    assert "{{" not in found.reason  # Argo would try to resolve it in the next task's parameters
    staging = verify_version(inputs(env="staging", folder="teams/ml/m/staging"), settings(), degraded,
                             contains=lambda c, r: False)
    assert staging.restore == "none"
    held = verify_version(inputs(), settings(on_failure="hold"), degraded, contains=lambda c, r: False)
    assert held.restore == "hold" and held.hold.startswith("v3 failed verification: ")
    first = verify_version(inputs(previous=""), settings(), degraded, contains=lambda c, r: False)
    assert first.restore == "none"  # nothing was deployed before


def test_a_model_without_an_input_example_is_verified_on_health_alone(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    healthy = Script(DeployStatus(revision=COMMIT, sync="Synced", health="Healthy", endpoint="http://127.0.0.1:9"))
    found = verify_version(inputs(source_uri=str(tmp_path)), settings(), healthy, contains=lambda c, r: False)
    assert found.outcome == HEALTH_ONLY and "no input example" in found.reason


def test_a_model_with_an_example_is_verified_by_its_answer(tmp_path, server):
    (tmp_path / "serving_input_example.json").write_text(json.dumps(EXAMPLE))
    ModelServer.answer = (200, b'{"predictions": [0.275, 0.295]}')
    healthy = Script(DeployStatus(revision=COMMIT, sync="Synced", health="Healthy", endpoint=server))
    found = verify_version(inputs(source_uri=str(tmp_path)), settings(), healthy, contains=lambda c, r: False)
    assert found.outcome == VERIFIED and "2 predictions (0.275, 0.295)" in found.reason


def test_give_up_says_what_failed_and_what_was_restored():
    with pytest.raises(VerificationFailed) as failed:
        give_up(GiveUpInput(model="m", version="3", env="production", reason="no answer", restore="rollback",
                            previous="2"))
    assert str(failed.value) == ("v3 of m failed verification in production: no answer; "
                                 "restored v2 (the alias moved back)")


def test_an_input_example_that_cannot_be_read_for_now_is_retried_not_taken_for_none(monkeypatch):
    """A store that does not answer is transient (the step retries); only a missing file means
    'no input example', which would verify the version on health alone."""
    from mlferry.steps.outcome import is_transient
    from mlferry.steps.verify import read_input_example

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Exception) as raised:
        read_input_example("s3://models/m/1/")
    assert is_transient(raised.value)

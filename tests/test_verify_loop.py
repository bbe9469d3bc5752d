"""The closed loop, against the real local stack and the local applier: a promotion ends when the
new version runs and answers its own input example, and a version that does not is undone by
itself, with the tags, the alias and a notification saying so.

Each test runs `mlferry applier` and `mlferry promote` as a user types them, from the test's own
folder, and a real HTTP listener stands for the team's Slack webhook. Real model servers start
(`mlflow models serve`), so the scenarios share a test per environment to keep the suite short.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import pytest
import yaml
from mlflow import MlflowClient

from mlferry.steps.naming import slugify
from tests.loopback import LoopbackServer, QuietHandler
from tests.models import register_pyfunc
from tests.test_applier import predict, wait_for
from tests.test_one_truth import annotations, cli, head, ok, tags


class FailsToLoad(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        raise RuntimeError("cannot load: the feature store is unreachable")

    def predict(self, context, model_input, params=None):
        return [0.0] * len(model_input)


class AnswersNaN(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [float("nan")] * len(model_input)


class LoadsForever(mlflow.pyfunc.PythonModel):
    """Loads for ten minutes once `marker` exists: MLflow loads it at logging time too, to check the
    input example, and the test creates the marker after that."""

    def __init__(self, marker: str):
        self.marker = marker

    def load_context(self, context):
        import os

        if os.path.exists(self.marker):
            time.sleep(600)

    def predict(self, context, model_input, params=None):
        return [0.0] * len(model_input)


class Listener(QuietHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        type(self).received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.reply(200, b"ok", None)


@pytest.fixture
def webhook():
    Listener.received = []
    with LoopbackServer(Listener) as server:
        yield f"{server.url}/services/T0/B0/secret-path", Listener.received


@pytest.fixture
def loop(tmp_path: Path, gitops_remote: Path, unique_name: str, webhook):
    """The user's folder (its own aliases), the local applier following the test's GitOps remote,
    and the environment a promotion needs to verify and notify."""
    suffix = unique_name[-8:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "mlferry.yaml").write_text(yaml.safe_dump({"verify": "local", "environments": {
        "staging": {"aliases": [f"stage-{suffix}"], "on_failure": "rollback", "verify_timeout": 15},
        "production": {"aliases": [f"prod-{suffix}"], "verify_timeout": 120}}}))
    status_file = tmp_path / "applier" / "status.json"
    env = {"MLFERRY_APPLIER_STATUS": str(status_file), "MLFERRY_NOTIFY_URL": webhook[0]}
    applier = subprocess.Popen([sys.executable, "-m", "mlferry.cli", "applier", "--status-file", str(status_file)],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(status_file, lambda s: s["head"] == head(gitops_remote))
    try:
        yield work, env, {"staging": f"stage-{suffix}", "production": f"prod-{suffix}"}, webhook[1]
    finally:
        applier.terminate()
        applier.wait(timeout=60)


def served(work: Path, env: dict, folder: str) -> dict:
    return wait_for(Path(env["MLFERRY_APPLIER_STATUS"]),
                    lambda s: s["folders"].get(folder, {}).get("health") == "Healthy")["folders"][folder]


def test_a_version_that_fails_verification_in_production_is_rolled_back_by_itself(
        registered_model, gitops_remote, loop):
    work, env, alias, notifications = loop
    name, good = registered_model(alias=alias["production"])
    folder = f"teams/ml/{slugify(name)}/production"

    done = ok(cli(work, "promote", name, "--alias", alias["production"], "--env", "production", env=env))
    assert f"verified: answered its input example at {head(gitops_remote)[:12]}: 2 predictions" in done, done
    assert tags(name, good)["mlferry.production.verified"] == "verified"

    for broken, why in ((FailsToLoad(), "cannot load: the feature store is unreachable"),
                        (AnswersNaN(), "a prediction is nan")):
        bad = register_pyfunc(name, broken, alias=alias["production"])
        failed = cli(work, "promote", name, "--alias", alias["production"], "--env", "production", env=env)
        assert failed.returncode != 0
        # One line: what failed and what was restored.
        assert (f"v{bad} of {name} failed verification in production: " in failed.stderr
                and f"restored v{good} (the alias moved back)" in failed.stderr), failed.stderr
        assert why in failed.stderr, failed.stderr
        # The alias is back, both versions say why, and the version before serves again.
        assert MlflowClient().get_model_version_by_alias(name, alias["production"]).version == good
        bad_tags = tags(name, bad)
        assert bad_tags["mlferry.production.status"] == "failed" and why in bad_tags["mlferry.production.error"]
        assert bad_tags["mlferry.production.rollback"].startswith(f"rolled back to v{good} (verify: ")
        assert tags(name, good)["mlferry.production.status"] == "deployed"
        assert annotations(gitops_remote, folder)["mlferry.io/version"] == good
        assert len(predict(served(work, env, folder)["endpoint"], [[1.0, 2.0]])) == 1
        # The team's webhook heard it, in Slack's shape.
        message = notifications[-1]
        assert set(message) == {"text", "blocks"} and f"{name} v" in message["text"]
        assert why in message["text"] and f"restored v{good}" in message["text"]
    assert len(notifications) == 2

    # Moved back, nothing is pending: reconcile agrees with what runs.
    assert cli(work, "reconcile", "--dry-run", env=env).returncode == 0


def test_a_timeout_rolls_back_a_hold_keeps_the_alias_and_health_alone_verifies_a_model_without_example(
        registered_model, gitops_remote, loop, tmp_path):
    work, env, alias, notifications = loop
    name, good = registered_model(alias=alias["staging"], input_example=False)
    folder = f"teams/ml/{slugify(name)}/staging"

    done = ok(cli(work, "promote", name, "--alias", alias["staging"], env=env))
    assert "verified   health-only: healthy at" in done and "no input example was logged" in done, done
    assert tags(name, good)["mlferry.staging.verified"] == "health-only"

    # A version that never comes up: the deadline (15 s in staging here) ends the wait, and it is rolled back.
    marker = tmp_path / "load-forever"
    slow = register_pyfunc(name, LoadsForever(str(marker)), alias=alias["staging"])
    marker.touch()
    started = time.monotonic()
    failed = cli(work, "promote", name, "--alias", alias["staging"], env=env)
    assert failed.returncode != 0 and time.monotonic() - started < 90
    assert "within 15 s" in failed.stderr and f"restored v{good} (the alias moved back)" in failed.stderr, failed.stderr
    assert MlflowClient().get_model_version_by_alias(name, alias["staging"]).version == good
    assert tags(name, slow)["mlferry.staging.status"] == "failed"
    assert annotations(gitops_remote, folder)["mlferry.io/version"] == good

    # on_failure: hold. The alias keeps naming the bad version; the folder holds the one before.
    config = yaml.safe_load((work / "mlferry.yaml").read_text())
    config["environments"]["staging"]["on_failure"] = "hold"
    (work / "mlferry.yaml").write_text(yaml.safe_dump(config))
    bad = register_pyfunc(name, AnswersNaN(), alias=alias["staging"])
    failed = cli(work, "promote", name, "--alias", alias["staging"], env=env)
    assert failed.returncode != 0 and f"restored v{good}, held there" in failed.stderr, failed.stderr
    assert MlflowClient().get_model_version_by_alias(name, alias["staging"]).version == bad
    held = annotations(gitops_remote, folder)
    assert held["mlferry.io/version"] == good and held["mlferry.io/hold"].startswith(f"v{bad} failed verification: ")
    assert tags(name, bad)["mlferry.staging.status"] == "failed"
    assert [("restored v" in n["text"]) for n in notifications] == [True, True]

"""Alias moved → a verified answer from the new version, and a failing version → the one before restored.

On a fresh local stack with its local applier and `mlferry events serve` (`verify: local`):

- N times: register a new version of a small scikit-learn model, move alias `production` to it,
  and time until the server the applier runs for the folder is that version, healthy, and answers
  POST /invocations (the promotion's own verify step smoke-tests it before this). The split per
  step comes from the run records; the verify step holds the wait for the model server.
- The baseline, in the same run: the same model version started by hand with `mlflow models serve`
  from its published copy, timed to its first answer: what a promotion cannot be faster than.
- M times: a version that answers NaN gets the alias; time until the alias is back on the version
  before and the applier serves that version again.

    .venv/bin/python bench/verify_loop.py [--promotions 10] [--failures 3]

Goal: median alias → verified answer under 15 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchlib import ROOT, Report, local_stack, median, say, scratch_dir, stop_on_sigterm

GOAL_SECONDS = 15.0
MODEL = "verify-loop-bench"
ROWS = [[1.0, 2.0], [3.0, 4.0]]


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--failures", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    with scratch_dir("verify-loop") as tmp, local_stack(Path(tmp) / "stack") as (stack, env):
        loop_env = {**os.environ, **env, "MLFERRY_VERIFY": "local",
                    "MLFERRY_APPLIER_STATUS": str(Path(tmp) / "applier" / "status.json")}
        with background([sys.executable, "-m", "mlferry.cli", "applier", "--status-file",
                         loop_env["MLFERRY_APPLIER_STATUS"]], loop_env, Path(tmp) / "applier.log"), \
                receiver(loop_env, Path(tmp)) as runs:
            good, baseline = [], []
            for i in range(args.promotions):
                version, took = promote_good(loop_env)
                good.append(took)
                baseline.append(serve_by_hand(version, Path(tmp) / f"serve-{i}.log"))
                say(f"v{version}: alias → verified answer {took:.1f} s; mlflow models serve alone {baseline[-1]:.1f} s")
            restores = []
            for _ in range(args.failures):
                bad, back, took = promote_broken(loop_env)
                restores.append(took)
                say(f"v{bad} (answers NaN): alias → v{back} restored and serving in {took:.1f} s")
            steps = step_medians(runs)

    report = Report("verify_loop", "alias moved → a verified answer through the local applier; a failing "
                                   "version → the one before restored")
    report.details = {"alias_to_verified_s": rounded(good), "serve_by_hand_s": rounded(baseline),
                      "failing_to_restored_s": rounded(restores), "step_median_s": steps}
    loop, alone = median(good), median(baseline)
    report.add(f"median alias → verified answer, of {len(good)} (baseline: mlflow models serve alone)", loop,
               alone, loop / alone if alone else None, f"< {GOAL_SECONDS:.0f} s", loop < GOAL_SECONDS, unit="s",
               ratio_means="x the server's own start")
    report.add(f"median failing version → the one before serving again, of {len(restores)}", median(restores),
               None, None, "", None, unit="s")
    for step, seconds in steps.items():
        report.add(f"median time of step {step}", seconds, None, None, "", None, unit="s")
    report.finish()
    return 0


def rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


class background:
    """A process for the length of a `with` block, stopped (SIGTERM, then waited for) after it."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.cmd, self.env, self.log = cmd, env, log

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)
        return self.proc

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class receiver:
    """`mlferry events serve` with MLflow's webhook registered to it; yields its runs folder."""

    def __init__(self, env: dict, tmp: Path):
        self.env, self.tmp = env, tmp

    def __enter__(self) -> Path:
        from latency import free_port, wait_for, _healthy

        port = free_port()
        self.inner = background([sys.executable, "-m", "mlferry.cli", "events", "serve", "--port", str(port),
                                 "--stack-dir", str(self.tmp / "rx")], self.env, self.tmp / "rx.log")
        self.inner.__enter__()
        assert wait_for(lambda: _healthy(port), 60), "the receiver did not start"
        subprocess.run([sys.executable, "-m", "mlferry.cli", "webhook", "register", "--url",
                        f"http://127.0.0.1:{port}/mlflow"], cwd=ROOT, env=self.env, check=True, capture_output=True)
        return self.tmp / "rx" / "runs"

    def __exit__(self, *exc):
        self.inner.__exit__(*exc)


def folder() -> str:
    from mlferry.steps.naming import slugify

    return f"teams/ml/{slugify(MODEL)}/production"


def status(env: dict) -> dict:
    try:
        return json.loads(Path(env["MLFERRY_APPLIER_STATUS"]).read_text())["folders"].get(folder(), {})
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def answers(endpoint: str) -> list:
    body = json.dumps({"inputs": ROWS}).encode()
    request = urllib.request.Request(f"{endpoint}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["predictions"]


def serving(env: dict, version: str, timeout: float = 180) -> float:
    """Seconds until the applier serves `version` healthy and it answers finite predictions."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        now = status(env)
        if now.get("version") == version and now.get("health") == "Healthy" and now.get("endpoint"):
            try:
                if all(math.isfinite(p) for p in answers(now["endpoint"])):
                    return time.monotonic() - started
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"v{version} was not served within {timeout:.0f} s: {status(env)}")


def promote_good(env: dict) -> tuple[str, float]:
    from mlflow import MlflowClient

    from tests.models import register_model

    _, version = register_model(MODEL)  # not part of the measured time
    started = time.monotonic()
    MlflowClient().set_registered_model_alias(MODEL, "production", version)
    serving(env, version)
    return version, time.monotonic() - started


def promote_broken(env: dict) -> tuple[str, str, float]:
    from mlflow import MlflowClient

    from tests.models import register_pyfunc
    from tests.test_verify_loop import AnswersNaN

    client = MlflowClient()
    before = client.get_model_version_by_alias(MODEL, "production").version
    bad = register_pyfunc(MODEL, AnswersNaN())
    started = time.monotonic()
    client.set_registered_model_alias(MODEL, "production", bad)
    while client.get_model_version_by_alias(MODEL, "production").version != before:
        if time.monotonic() - started > 180:
            raise RuntimeError(f"the alias did not come back to v{before}")
        time.sleep(0.2)
    serving(env, before)
    return bad, before, time.monotonic() - started


def serve_by_hand(version: str, log: Path) -> float:
    """`mlflow models serve` of the published copy, started to first answer: the floor of the loop."""
    from latency import free_port

    port = free_port()
    uri = f"s3://mlferry/models/{folder().split('/')[2]}/{version}/"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "--workers", "1"], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.monotonic() - started < 120:
            try:
                answers(f"http://127.0.0.1:{port}")
                return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"mlflow models serve did not answer within 120 s; see {log}")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def step_medians(runs: Path) -> dict[str, float]:
    from latency import _step_durations

    return _step_durations(runs)


if __name__ == "__main__":
    sys.exit(main())

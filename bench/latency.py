"""Alias set → commit on the GitOps remote, through MLflow's webhook and `mlferry events serve`.

N times: register a new version of a small scikit-learn model, move alias
`production` to it, and time until the remote's head commit names that version. Prints the
median and p95 and where a promotion spends its time (per step, from the run records).
Goal: median ≤ 3 s.

    .venv/bin/python bench/latency.py [--promotions 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchlib import ROOT, Report, say, scratch_dir, stop_on_sigterm

GOAL_MEDIAN = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_subject(repo: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), "log", "-1", "--format=%s"], capture_output=True,
                          text=True).stdout.strip()


def wait_for(predicate, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=20)
    args = parser.parse_args()
    from benchlib import local_stack

    with scratch_dir("latency") as tmp, local_stack(Path(tmp) / "stack") as (stack, env):
        sys.path.insert(0, str(ROOT))
        from mlflow import MlflowClient

        from tests.models import register_model

        name, first = register_model("latency-bench")
        client = MlflowClient()
        port = free_port()
        runs = Path(tmp) / "local"
        receiver = subprocess.Popen(
            [sys.executable, "-m", "mlferry.cli", "events", "serve", "--port", str(port), "--stack-dir", str(runs)],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "rx.log", "w"))
        try:
            assert wait_for(lambda: _healthy(port), 60), "the receiver did not start"
            subprocess.run([sys.executable, "-m", "mlferry.cli", "webhook", "register",
                            "--url", f"http://127.0.0.1:{port}/mlflow"], cwd=ROOT, env={**os.environ, **env},
                           check=True, capture_output=True)
            latencies = []
            for i in range(args.promotions):
                _, version = register_model(name)  # a new version; not part of the measured time
                started = time.monotonic()
                client.set_registered_model_alias(name, "production", version)
                landed = wait_for(lambda: f"v{version} to production" in head_subject(stack.gitops_repo), 120)
                took = time.monotonic() - started
                if not landed:
                    say(f"version {version}: no commit within 120 s")
                    continue
                latencies.append(took)
                say(f"version {version}: alias → commit in {took:.2f} s")
                wait_for(lambda: _idle(port), 60)  # measure each promotion on its own
            steps = _step_durations(runs / "runs")
        finally:
            receiver.terminate()
            receiver.wait(timeout=30)

    median, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    report = Report("latency", "alias set → commit on the GitOps remote, through MLflow's webhook and "
                               "`mlferry events serve`")
    report.details = {"latencies_s": [round(t, 3) for t in latencies], "step_median_s": steps}
    report.add(f"median of {len(latencies)}/{args.promotions} promotions", median, None, None,
               f"≤ {GOAL_MEDIAN:.1f} s", median <= GOAL_MEDIAN and len(latencies) == args.promotions, unit="s")
    report.add("p95", p95, None, None, "", None, unit="s")
    for step, seconds in steps.items():
        report.add(f"median time of step {step}", seconds, None, None, "", None, unit="s")
    report.finish()
    return 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _idle(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            health = json.loads(resp.read())
        return not health.get("queued") and not health.get("running")
    except OSError:
        return False


def _step_durations(runs_root: Path) -> dict[str, float]:
    from statistics import median

    from mlferry.engine import list_runs

    by_step: dict[str, list[float]] = {}
    for run in list_runs(runs_root):
        for task in run.tasks:
            if task.type == "Pod" and task.duration:
                by_step.setdefault(task.name, []).append(task.duration)
    return {step: round(median(values), 2) for step, values in by_step.items()}


if __name__ == "__main__":
    sys.exit(main())

"""Alias set → commit on the GitOps remote, through MLflow's webhook and `mlferry events serve`.

N times: register a new version of a small scikit-learn model, move alias
`production` to it, and time until the remote's head commit names that version. Prints the
median and p95 and where a promotion spends its time (per step, from the run records).
Goal: median ≤ 1.0 s (issue 19; it was 3 s).

    .venv/bin/python bench/latency.py [--promotions 20]

Each promotion's steps are forked from the run's warm process (engine.warm); the same promotions
with MLFERRY_WARM_STEPS=0 (a new Python process per step) are the baseline, in the same run.
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

GOAL_MEDIAN = 1.0  # issue 19


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
    parser.add_argument("--promotions", type=int, default=20, help="per mode (warm starts, then cold)")
    args = parser.parse_args()
    from benchlib import local_stack

    with scratch_dir("latency") as tmp, local_stack(Path(tmp) / "stack") as (stack, env):
        sys.path.insert(0, str(ROOT))
        from tests.models import register_model

        name, _first = register_model("latency-bench")
        # Side by side in one run, on one stack: each mode gets its own receiver and run folder.
        measured = {mode: promotions(stack, env, Path(tmp) / mode, name, args.promotions, warm=(mode == "warm"))
                    for mode in ("warm", "cold")}

    (warm, warm_steps), (cold, cold_steps) = measured["warm"], measured["cold"]
    median, p95 = percentile(warm, 0.5), percentile(warm, 0.95)
    cold_median = percentile(cold, 0.5)
    report = Report("latency", "alias set → commit on the GitOps remote, through MLflow's webhook and "
                               "`mlferry events serve`; steps forked warm (default) against new processes")
    report.details = {"latencies_s": [round(t, 3) for t in warm], "cold_latencies_s": [round(t, 3) for t in cold],
                      "step_median_s": warm_steps, "cold_step_median_s": cold_steps}
    report.add(f"median of {len(warm)}/{args.promotions} promotions (baseline: MLFERRY_WARM_STEPS=0)", median,
               cold_median, cold_median / median if median else None, f"≤ {GOAL_MEDIAN:.1f} s",
               median <= GOAL_MEDIAN and len(warm) == args.promotions, unit="s", ratio_means="x faster")
    report.add("p95", p95, percentile(cold, 0.95), None, "", None, unit="s")
    for step, seconds in warm_steps.items():
        what = step if "→" in step else f"step {step}"
        report.add(f"median time of {what}", seconds, cold_steps.get(step), None, "", None, unit="s")
    report.finish()
    return 0


def promotions(stack, env: dict, folder: Path, name: str, count: int, *, warm: bool) -> tuple[list[float], dict]:
    """Alias → commit times of `count` promotions through a receiver of its own, and its step medians."""
    from mlflow import MlflowClient

    from tests.models import register_model

    client = MlflowClient()
    port = free_port()
    folder.mkdir(parents=True)
    mode_env = {**os.environ, **env, "MLFERRY_WARM_STEPS": "1" if warm else "0"}
    receiver = subprocess.Popen(
        [sys.executable, "-m", "mlferry.cli", "events", "serve", "--port", str(port), "--stack-dir", str(folder)],
        cwd=ROOT, env=mode_env, stdout=subprocess.DEVNULL, stderr=open(folder / "rx.log", "w"))
    latencies, moved_at = [], {}
    try:
        assert wait_for(lambda: _healthy(port), 60), "the receiver did not start"
        subprocess.run([sys.executable, "-m", "mlferry.cli", "webhook", "register",
                        "--url", f"http://127.0.0.1:{port}/mlflow"], cwd=ROOT, env=mode_env,
                       check=True, capture_output=True)
        for _ in range(count):
            _, version = register_model(name)  # a new version; not part of the measured time
            started = time.monotonic()
            moved_at[str(version)] = time.time()
            client.set_registered_model_alias(name, "production", version)
            landed = wait_for(lambda: f"v{version} to production" in head_subject(stack.gitops_repo), 120)
            took = time.monotonic() - started
            if not landed:
                say(f"{'warm' if warm else 'cold'} version {version}: no commit within 120 s")
                continue
            latencies.append(took)
            say(f"{'warm' if warm else 'cold'} version {version}: alias → commit in {took:.2f} s")
            wait_for(lambda: _idle(port), 60)  # measure each promotion on its own
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    return latencies, {**_step_durations(folder / "runs"), **_phases(folder / "runs", moved_at)}


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


def _phases(runs_root: Path, moved_at: dict[str, float]) -> dict[str, float]:
    """Median seconds from the alias move to the run's start (MLflow's webhook delivery and the
    receiver), and from the run's start to the end of its commit step (the steps)."""
    from datetime import datetime
    from statistics import median

    from mlferry.engine import list_runs

    def seconds(stamp: str | None) -> float | None:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None

    found: dict[str, list[float]] = {}
    for run in list_runs(runs_root):
        try:  # a webhook run's version is in the event's body
            version = json.loads(run.parameters.get("body") or "{}").get("data", {}).get("version", "")
        except (ValueError, AttributeError):
            version = ""
        moved, began = moved_at.get(str(version)), seconds(run.started)
        commit = next((t for t in run.tasks if t.name == "commit"), None)
        committed = seconds(commit.finished) if commit else None
        if moved is None or began is None or committed is None:
            continue
        for phase, value in (("alias move → run started", began - moved),
                             ("run started → commit step done", committed - began)):
            found.setdefault(phase, []).append(value)
    return {phase: round(median(values), 2) for phase, values in found.items()}


if __name__ == "__main__":
    sys.exit(main())

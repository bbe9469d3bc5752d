"""Run every benchmark, one after the other, then print and save one summary of their figures.

    .venv/bin/python bench/run_all.py [--only artifact_copy reconcile_scale gitops_history] [--strict]

Each benchmark runs in its own process (it starts and stops its own servers) and writes
bench/results/<name>.json; this script then writes bench/results/summary.md, a markdown block
of the figures with the command that produced them, ready to paste into the README.
Exit status: 1 when a benchmark could not run; with --strict, also when a goal was missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BENCH, RESULTS, ROOT, Row, machine, say, stop_on_sigterm, table  # noqa: E402

# bench/<name>.py, run in this order; one whose file is not there (yet) is skipped.
BENCHMARKS = [name for name in ("artifact_copy", "reconcile_scale", "gitops_history", "latency", "import_time")
              if (BENCH / f"{name}.py").exists()]
TIMEOUT = 20 * 60  # seconds per benchmark: each takes a few minutes


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args()

    started = time.time()
    host = machine()
    failed = []
    for name in args.only:
        say(f"=== bench/{name}.py ===")
        began = time.time()
        (RESULTS / f"{name}.json").unlink(missing_ok=True)  # a crashed run must not show old figures
        code = run_benchmark(name)
        say(f"=== bench/{name}.py: {'done' if code == 0 else f'FAILED ({code})'} in {time.time() - began:.0f} s ===")
        if code != 0:
            failed.append(name)

    results = [json.loads((RESULTS / f"{n}.json").read_text()) for n in args.only if (RESULTS / f"{n}.json").exists()]
    command = ".venv/bin/python bench/run_all.py" + (f" --only {' '.join(args.only)}" if args.only != BENCHMARKS else "")
    summary = markdown(results, command, host, time.time() - started, failed)
    (RESULTS / "summary.md").write_text(summary)
    print()
    for result in results:
        print(f"== {result.get('title', result.get('name'))} ==")
        print(render(result, markdown=False))
        print()
    missed = [f"{r.get('name')}: {row['what']}" for r in results for row in r.get("rows", []) if row["passed"] is False]
    print("goals missed:\n  " + "\n  ".join(missed) if missed else "all goals met")
    if failed:
        print(f"could not run: {', '.join(failed)}")
    print(f"summary written to {(RESULTS / 'summary.md').relative_to(ROOT)}")
    return 1 if failed or (args.strict and missed) else 0


def run_benchmark(name: str) -> int | str:
    """Its exit code. Stopped with SIGTERM (never SIGKILL first) on a timeout or when this script
    is stopped, so that the benchmark's own `finally` stops the servers it started."""
    proc = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py")], cwd=ROOT)
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"bench/{name}.py is still running after {TIMEOUT} s: stopping it")
        return "timeout"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def markdown(results: list[dict], command: str, host: dict, seconds: float, failed: list[str]) -> str:
    lines = [f"Figures from `{command}` on {time.strftime('%Y-%m-%d')} ({seconds / 60:.0f} min; "
             f"{host['cpus']} cores, {host['memory_gib']:.0f} GiB, load average {host['loadavg_1m']} at the start, "
             f"{host['git']}). Ratios compare two figures measured in the same run; "
             "the machine is shared, so absolute times vary from run to run.", ""]
    for result in results:
        lines += [f"**{result.get('title', result.get('name'))}** (`bench/{result.get('name')}.py`)", "",
                  render(result, markdown=True), ""]
    if failed:
        lines += [f"Could not run: {', '.join(failed)}.", ""]
    return "\n".join(lines)


def render(result: dict, markdown: bool) -> str:
    """A benchmark's table (benchlib.Report's rows); a JSON without rows is shown as it is."""
    if "rows" in result:
        return table([Row(**row) for row in result["rows"]], markdown=markdown)
    text = json.dumps({k: v for k, v in result.items() if k not in ("details", "machine")}, indent=2, default=str)
    return f"```json\n{text}\n```" if markdown else text


if __name__ == "__main__":
    sys.exit(main())

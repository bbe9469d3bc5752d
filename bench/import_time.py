"""What a step pays to start in a pod: a new interpreter, Hera's runner, then the step's own modules.

    .venv/bin/python bench/import_time.py [--reps 5]

For every `-e mlferry.steps.<module>:<function>` entry of the generated WorkflowTemplates, a new
`python -c` process imports `hera.workflows.runner` (what `python -m hera.workflows.runner` imports
before it reads its arguments), then the step's module, and prints the seconds of each; `--reps`
processes per step, medians reported. The baseline is `python -c pass`, the interpreter alone.
A second pass with `-X importtime` names the three heaviest packages each step imports beyond
Hera, which is where to look for import cost a step does not need.

Locally, none of this is paid per step: steps are forked from a warm server that imported Hera
and the step modules once (mlferry/engine/warm.py). In a pod it is paid by every step.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, Report, median, say, stop_on_sigterm, timed  # noqa: E402

PROBE = """
import time
started = time.perf_counter()
import hera.workflows.runner
hera = time.perf_counter()
import {module}
print(hera - started, time.perf_counter() - hera)
"""
EMPTY = "import time; print(time.perf_counter())"


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    report = Report("import_time", "a step's process start in a pod: the interpreter, Hera's runner, the step's modules")
    interpreter = median([process_seconds(["-c", "pass"]) for _ in range(args.reps)])
    report.add("interpreter alone (`python -c pass`, wall)", interpreter, None, None, "", None, unit="s")
    figures = {}
    for module in step_modules():
        runs = [probe(module) for _ in range(args.reps)]
        hera, own = median([r[0] for r in runs]), median([r[1] for r in runs])
        heavy = heaviest_imports(module)
        figures[module] = {"hera_seconds": hera, "own_seconds": own, "heaviest": heavy}
        say(f"{module}: Hera {hera:.2f} s, its own modules {own:.2f} s; heaviest: {heavy}")
        report.add(f"{module.removeprefix('mlferry.steps.')}: Hera's runner / the step's own modules", f"{hera:.2f} / {own:.2f} s",
                   None, None, "", None)
        report.add(f"{module.removeprefix('mlferry.steps.')}: heaviest beyond Hera (cumulative)",
                   ", ".join(f"{name} {seconds:.2f} s" for name, seconds in heavy) or "-", None, None, "", None)
    report.details = {"reps": args.reps, "interpreter_seconds": interpreter, "steps": figures,
                      "notes": ["import times of a new process per step, medians; the heaviest packages from "
                                "python -X importtime, top-level packages other than hera, pydantic and the stdlib"]}
    report.finish()
    return 0


def step_modules() -> list[str]:
    from mlferry.engine.warm import entry_modules
    from mlferry.generate import workflow_templates
    from mlferry.workflows.bundle import Bundle

    return entry_modules(t for d in workflow_templates(Bundle()) for t in d["spec"]["templates"])


def process_seconds(argv: list[str]) -> float:
    with timed() as took:
        subprocess.run([sys.executable, *argv], check=True, cwd=ROOT, capture_output=True)
    return took["seconds"]


def probe(module: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def heaviest_imports(module: str, top: int = 3) -> list[tuple[str, float]]:
    """The packages that took longest to import after Hera's runner: each package's outermost import
    (the largest cumulative time among its modules' lines, which includes what it imports)."""
    code = f"import hera.workflows.runner, sys; sys.stderr.write('--- step ---\\n'); import {module}"
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], check=True, cwd=ROOT,
                         capture_output=True, text=True).stderr
    after = err.split("--- step ---\n", 1)[-1]
    totals: dict[str, float] = defaultdict(float)
    for line in after.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)", line)
        if found:
            package = found.group(2).split(".")[0]
            if package not in ("hera", "pydantic", "pydantic_core", "mlferry") and package not in sys.stdlib_module_names:
                totals[package] = max(totals[package], int(found.group(1)) / 1e6)
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


if __name__ == "__main__":
    sys.exit(main())

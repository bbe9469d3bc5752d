"""Small step functions for the executor tests, run through Hera's runner as real steps are.

Each is a `constructor="runner"` script, so `hera.workflows.runner -e tests.executor_steps:<fn>`
runs it in a subprocess exactly as a container would; the tests build WorkflowTemplates from
them with Hera, so the YAML has the shape Hera emits.
"""

import json
import os
import time
from pathlib import Path
from typing import Annotated

from hera.workflows import Input, Output, Parameter, script


class Order(Input):
    model: str
    version: int


class Priced(Output):
    label: str
    doubled: Annotated[int, Parameter(name="doubled-version")]


@script(constructor="runner", image="python:3.11")
def price(order: Order) -> Priced:
    return Priced(label=f"{order.model}@v{order.version}", doubled=order.version * 2)


@script(constructor="runner", image="python:3.11")
def shout(label: str) -> Annotated[str, Parameter(name="loud")]:
    return label.upper()


@script(constructor="runner", image="python:3.11")
def coin(side: str) -> str:
    return side  # printed: becomes outputs.result


@script(constructor="runner", image="python:3.11")
def items(count: int) -> Annotated[list, Parameter(name="items")]:
    return [{"n": i, "name": f"item-{i}"} for i in range(count)]


@script(constructor="runner", image="python:3.11")
def work(n: int, journal: str, seconds: float) -> Annotated[str, Parameter(name="done")]:
    """Record when it ran, so a test can count how many ran at once."""
    started = time.time()
    time.sleep(seconds)
    Path(journal, f"{n}.json").write_text(json.dumps([started, time.time(), os.getpid()]))
    return f"done-{n}"


@script(constructor="runner", image="python:3.11")
def refuse(reason: str) -> None:
    raise RuntimeError(reason)


@script(image="python:3.11")
def add_one(count: int):
    """An inline script (Hera's default constructor): Argo runs its `source`, not the runner."""
    print(count + 1)


@script(constructor="runner", image="python:3.11")
def describe(mode: str, seconds: float = 0.0) -> Annotated[str, Parameter(name="seen")]:
    """What the process sees of itself (for tests/test_warm_starts.py); `mode` decides how it ends."""
    import sys

    seen = {"cwd": os.getcwd(), "path0": sys.path[0], "argv0": sys.argv[0], "argv": sys.argv[1:],
            "env": {k: v for k, v in os.environ.items() if k.startswith("PROBE_")},
            "ppid": os.getppid(), "pgid": os.getpgid(0), "pid": os.getpid(), "main": __name__,
            "modules": sorted(m for m in sys.modules if m.startswith("tests.executor_steps"))}
    print("to stdout")
    print("to stderr", file=sys.stderr)
    time.sleep(seconds)
    if mode == "exit-3":
        raise SystemExit(3)
    if mode == "exit-text":
        raise SystemExit("the step said why")
    if mode == "raise":
        raise ValueError("the step broke")
    if mode == "at-exit":  # what an exit must still do: atexit handlers, non-daemon threads, buffered output
        import atexit
        import threading

        atexit.register(lambda: print("atexit handler ran", file=sys.stderr, flush=True))
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished"))).start()
        sys.stdout.write("written, not flushed")
    return json.dumps(seen)


def imported(module: str) -> str:
    """Whether `module` was imported before this task's function ran (tests/test_warm_starts.py)."""
    import sys

    return "yes" if module in sys.modules else "no"

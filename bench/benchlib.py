"""What the benchmarks share: the local stack, request counting, measuring, the results table.

Every figure a benchmark reports is measured in the same run as the figure it is compared
with, on the same machine, and the comparison is a ratio: the machine is shared and noisy,
so absolute times from different runs say little.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MB = 1024 * 1024


def stop_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every `finally` stops what it started."""
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)


def median(values: list[float]) -> float:
    return statistics.median(values)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """with timed() as t: ... ; t["seconds"] afterwards."""
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start


def scratch_dir(name: str) -> tempfile.TemporaryDirectory:
    """A temporary folder for one benchmark run (removed at the end); $MLFERRY_BENCH_TMP picks where."""
    return tempfile.TemporaryDirectory(prefix=f"mlferry-bench-{name}-", dir=os.environ.get("MLFERRY_BENCH_TMP"))


def cache_dir() -> Path:
    """Kept between runs (the awscli venv): $MLFERRY_BENCH_CACHE or ~/.cache/mlferry-bench."""
    base = os.environ.get("MLFERRY_BENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlferry-bench"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the local stack --------------------------------------------------------------------------

def loopback_only(env: dict[str, str]) -> dict[str, str]:
    """Keep every client on 127.0.0.1: no proxy, no cloud metadata endpoint."""
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@contextmanager
def local_stack(directory: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """mlferry's local stack (MLflow, moto's S3 server, a bare GitOps repo) on free loopback ports,
    exported into os.environ while it runs; stopped (exactly the processes it started) afterwards."""
    from mlferry.stack import Stack

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(var, None)
    os.environ.update(loopback_only({}))
    stack = Stack(directory, ports={"s3": 0, "mlflow": 0})
    say(f"starting the local stack in {directory}")
    try:
        with signals_held():  # a stop request while a server starts waits for it, then stops both
            env = loopback_only(stack.up(log=lambda line: say("  " + line.strip())))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield stack, env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        with signals_held():  # a second Ctrl-C or SIGTERM must not cut the stopping short
            stack.down(log=lambda line: say("  " + line.strip()))


@contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP until the block ends (then unwind as they would have).

    Handlers, not a blocked signal mask: a mask would be inherited by the servers started
    inside the block, which could then not be stopped with SIGTERM.
    """
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received[0])


class LogCounter:
    """Counts the request lines a server appended to its log since `mark()`.

    The MLflow server (uvicorn) and moto's server (werkzeug) write one access-log line per
    request, so the counts cover every client, in this process or in a step subprocess.
    """

    MLFLOW = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)[^"]*" (\d{3})')
    S3 = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (/[^ "]*) HTTP/[0-9.]+" (\d{3})')

    def __init__(self, path: Path, pattern: re.Pattern[str]):
        self.path = Path(path)
        self.pattern = pattern
        self.offset = 0

    def mark(self) -> None:
        time.sleep(0.3)  # let the server write the lines of requests already answered
        self.offset = self.path.stat().st_size

    def lines(self) -> list[tuple[str, str, str]]:
        time.sleep(0.3)
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode("utf-8", errors="replace")
        return [m.groups() for m in self.pattern.finditer(text)]


def registry_requests(lines: list[tuple[str, str, str]]) -> dict[str, int]:
    """MLflow API calls by endpoint (the /health probes are not registry requests)."""
    counts: dict[str, int] = {}
    for method, path, _status in lines:
        key = f"{method} {path.removeprefix('/api/2.0/mlflow/')}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def s3_requests(lines: list[tuple[str, str, str]]) -> dict[str, int]:
    """S3 requests by kind: uploads are PUTs and multipart POSTs of objects."""
    kinds = {"objects_written": 0, "upload": 0, "head": 0, "get": 0, "list": 0, "delete": 0, "other": 0}
    for method, path, _status in lines:
        bare, _, query = path.partition("?")
        is_object = bare.strip("/").count("/") >= 1
        if method == "HEAD":
            kinds["head"] += 1
        elif method in ("PUT", "POST") and is_object:
            kinds["upload"] += 1  # every request of an upload: PUT, multipart start, parts, completion
            if (method == "PUT" and "partNumber=" not in query) or (method == "POST" and query.startswith("uploads")):
                kinds["objects_written"] += 1
        elif method == "GET" and (not is_object or "list-type" in query or "prefix=" in query):
            kinds["list"] += 1
        elif method == "GET":
            kinds["get"] += 1
        elif method == "DELETE" or (method == "POST" and "delete" in query):
            kinds["delete"] += 1
        else:
            kinds["other"] += 1
    kinds["total"] = len(lines)
    return kinds


def git_commit_count(bare_repo: Path, branch: str = "main") -> int:
    out = subprocess.run(["git", "--git-dir", str(bare_repo), "rev-list", "--count", branch],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


# -- processes --------------------------------------------------------------------------------

def proc_status_kb(pid: int | str, field_name: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak resident set of that process's memory)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    """A command run under bench/measure.py: wall time and the peak RSS of the command alone."""

    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict[str, str], *, timeout: float = 900) -> Measured:
    """Run cmd under bench/measure.py, a small wrapper that only spawns it.

    The wrapper reads the child's peak RSS from getrusage(RUSAGE_CHILDREN): measured in a
    process as small as the wrapper (~10 MB), not in this one, whose own peak a spawned child
    would otherwise inherit into its ru_maxrss.
    """
    with tempfile.NamedTemporaryFile(prefix="mlferry-bench-measure-", suffix=".json") as out:
        proc = subprocess.Popen([sys.executable, str(BENCH / "measure.py"), out.name, "--", *cmd], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the wrapper and what it ran
            proc.wait()
            raise
        if proc.returncode != 0 and not Path(out.name).read_text().strip():
            raise RuntimeError(f"measure.py failed ({proc.returncode}): {stderr[-2000:]}")
        result = json.loads(Path(out.name).read_text())
    return Measured(result["seconds"], result["maxrss_kb"] / 1024, result["returncode"], stdout, stderr)


# -- reporting --------------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    mlferry: float | int | str
    baseline: float | int | str | None
    ratio: float | None  # how the two compare; `ratio_means` says which way
    goal: str
    passed: bool | None  # None: a figure shown for information, no goal
    unit: str = ""
    ratio_means: str = ""

    def cells(self) -> list[str]:
        status = {True: "pass", False: "FAIL", None: "-"}[self.passed]
        return [self.what, _fmt(self.mlferry, self.unit), _fmt(self.baseline, self.unit),
                f"{self.ratio:.2f}x" if isinstance(self.ratio, (int, float)) else "-", self.goal, status]


HEADER = ["what", "mlferry", "baseline", "ratio", "goal", "result"]


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(rows: list[Row], markdown: bool = False) -> str:
    cells = [HEADER] + [row.cells() for row in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    mem = proc_meminfo_gib()
    return {"cpus": os.cpu_count(), "memory_gib": mem, "loadavg_1m": round(load[0], 2),
            "python": platform.python_version(), "platform": platform.platform(), "git": git}


def proc_meminfo_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


@dataclass
class Report:
    name: str  # the script's name: bench/<name>.py, bench/results/<name>.json
    title: str
    command: str = ""
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.command = self.command or f".venv/bin/python bench/{self.name}.py {' '.join(sys.argv[1:])}".strip()
        self.machine_start = machine()

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    @property
    def passed(self) -> bool:
        return all(row.passed is not False for row in self.rows)

    def finish(self) -> Path:
        print()
        print(f"== {self.title} ==")
        print(table(self.rows))
        missed = [row.what for row in self.rows if row.passed is False]
        print(f"goals missed: {', '.join(missed)}" if missed else "all goals met")
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = {
            "name": self.name, "title": self.title, "command": self.command,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": {**self.machine_start, "loadavg_1m_end": round(os.getloadavg()[0], 2)},
            "passed": self.passed,
            "rows": [asdict(row) for row in self.rows],
            "details": self.details,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"figures written to {path.relative_to(ROOT)}")
        return path

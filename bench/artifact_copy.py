"""Artifact copy: mlferry's publish against `aws s3 cp --recursive`, same folder, same S3 server.

    .venv/bin/python bench/artifact_copy.py [--sizes small large] [--rounds N] [--quick]

Two model folders are generated on local disk (random bytes): **small**, 97 MiB in 204 files
(200 × 64 KiB and 3 × 28 MiB, a typical scikit-learn or small torch model), and **large**, 965 MiB
in 2,004 files (2,000 × 64 KiB and 3 × 280 MiB). Each is copied into the local stack's S3 server
(moto, on 127.0.0.1) by

- **mlferry**, as local runs run the publish step: ``publish_version`` from a ``file:`` source,
  with the object store built as the step builds it, in a process forked by the same warm server
  the local executor forks its steps from (mlferry.engine.warm: Hera and the step's modules are
  imported once, before the first copy), through ``python -m hera.workflows.runner``;
- **mlferry, new process**, as a pod runs it: the same in a new interpreter that imports
  everything first (bench/publish_child.py), for information;
- the baseline: ``aws s3 cp --recursive`` (awscli 1.x, installed into its own throwaway venv
  in the bench cache, since awscli pins botocore versions the project's venv may not have).

mlferry hashes every file for the manifest (sha256) and for what the store must answer (a small
file's MD5, checked against its PUT's ETag; a large file's parts' SHA-256s, computed beside its
upload and checked with one HEAD against the SHA-256 the store keeps), confirms the whole prefix
with one listing and writes its manifest last; awscli checks none of that.

The new processes run under bench/measure.py, which reports their wall time (interpreter start
included) and peak RSS; the forked copy is timed from the request to the server to the child's
exit, and reports its own VmHWM. An untimed warm-up round (each tool once) comes first; the
measured rounds then rotate the order and the medians are compared, and the verdict is on the
median of the per-round ratios (each round's copies run back to back, so a burst of load on the
shared machine lands on all of them). Each copy is deleted before the next one: moto keeps what
it stores, so a server holding several copies would slow the later ones down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (BENCH, MB, Measured, Report, cache_dir, local_stack, median, proc_status_kb,  # noqa: E402
                      run_measured, say, scratch_dir, stop_on_sigterm, timed)

CHUNK = 1 * MB
MODEL = "bench-artifact-copy"
AWS_PREFIX = "aws-cp/"
TOOLS = ("mlferry", "aws", "mlferry-new-process")


@dataclass(frozen=True)
class Size:
    name: str
    small_files: int
    small_kib: int
    large_files: int
    large_mib: int
    rounds: int
    goal: float  # aws time / mlferry time, on the median of the rounds


SIZES = {
    "small": Size("small", 200, 64, 3, 28, rounds=9, goal=1.0),
    "large": Size("large", 2000, 64, 3, 280, rounds=5, goal=1.1),
}


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "large"])
    parser.add_argument("--rounds", type=int, help="each round copies once with each tool (default: 9 small, 5 large)")
    parser.add_argument("--quick", action="store_true", help="the small model, one round (to try the script)")
    args = parser.parse_args()
    sizes = [SIZES[name] for name in (["small"] if args.quick else args.sizes)]
    if args.quick or args.rounds:
        sizes = [dataclasses.replace(s, rounds=1 if args.quick else args.rounds) for s in sizes]

    report = Report("artifact_copy", "artifact copy: mlferry's publish step vs aws s3 cp --recursive")
    aws = awscli()
    aws_version = subprocess.run([str(aws), "--version"], capture_output=True, text=True).stdout.strip()
    say(f"baseline: {aws_version}")
    details: dict = {"baseline": aws_version, "sizes": {}}
    with scratch_dir("artifact-copy") as tmp:
        tmp = Path(tmp)
        for size in sizes:
            details["sizes"][size.name] = measure_size(report, size, tmp / size.name, aws)
    report.details = {
        **details,
        "notes": ["mlferry's copy is forked from a warm server, as the local executor runs the publish step; "
                  "`mlferry, new process` and aws s3 cp include their interpreter's start; all write to the same "
                  "moto server, one copy at a time, each copy deleted before the next",
                  "mlferry also hashes every file, checks what the store holds against it (a small file's "
                  "ETag, a large file's SHA-256 of its parts), lists the prefix once to confirm it and writes a "
                  "manifest; aws s3 cp does none of that"],
    }
    report.finish()
    return 0


def measure_size(report: Report, size: Size, tmp: Path, aws: Path) -> dict:
    source = tmp / "model"
    with timed() as gen:
        files, total = generate_model(source, size)
    os.sync()  # its writeback would otherwise compete with the first copies
    say(f"{size.name}: generated {files} files, {total / MB:.0f} MiB in {source} ({gen['seconds']:.1f} s)")
    with local_stack(tmp / "stack") as (stack, env):
        bench = Bench(source, files, total, env, aws_environment(env, tmp), aws, stack._state().parts["s3"].pid, tmp)
        try:
            # One untimed round first: the first copies into a fresh server, right after the model was
            # written, ran up to 50% slower for whichever tool went first, which skewed the medians.
            warm_up = [bench.copy(tool, 0) for tool in TOOLS]
            runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
            for round_no in range(1, size.rounds + 1):
                shift = round_no % len(TOOLS)  # each tool goes first, second and last in turn
                for tool in TOOLS[shift:] + TOOLS[:shift]:
                    runs[tool].append(bench.copy(tool, round_no))
        finally:
            bench.close()
    add_rows(report, size, files, total, runs)
    return {"files": files, "bytes": total, **size.__dict__, "generate_seconds": gen["seconds"],
            "runs": runs, "warm_up": warm_up}


def add_rows(report: Report, size: Size, files: int, total: int, runs: dict[str, list[dict]]) -> None:
    what = f"{total / MB:.0f} MiB in {files} files"
    n = size.rounds
    times = {tool: median([r["seconds"] for r in runs[tool]]) for tool in TOOLS}
    paired = sorted(a["seconds"] / m["seconds"] for m, a in zip(runs["mlferry"], runs["aws"]))
    verdict = median(paired)
    report.add(f"{what}: wall time, mlferry (forked, as local runs) vs aws (median of {n})", times["mlferry"],
               times["aws"], times["aws"] / times["mlferry"], "", None, unit="s")
    report.add(f"{what}: per-round ratios aws/mlferry (min, median, max)",
               f"{paired[0]:.2f}x, {verdict:.2f}x, {paired[-1]:.2f}x", None, verdict,
               f"median ≥ {size.goal:.2f}x (mlferry {'not slower' if size.goal == 1 else 'faster'})",
               verdict >= size.goal)
    cold = sorted(a["seconds"] / m["seconds"] for m, a in zip(runs["mlferry-new-process"], runs["aws"]))
    report.add(f"{what}: mlferry in a new process (as a pod) vs aws", times["mlferry-new-process"], times["aws"],
               median(cold), "(for information: the interpreter's start and imports)", None, unit="s")
    report.add(f"{what}: throughput (median)", total / MB / times["mlferry"], total / MB / times["aws"], None, "",
               None, unit="MiB/s")
    new_rss = max(r["peak_rss_mb"] for r in runs["mlferry-new-process"])
    aws_rss = max(r["peak_rss_mb"] for r in runs["aws"])
    report.add(f"{what}: peak RSS, mlferry in a new process vs aws (max of {n})", new_rss, aws_rss,
               new_rss / aws_rss, "mlferry < 300 MB", new_rss < 300, unit="MB")
    report.add(f"{what}: peak RSS of the forked copy (its own VmHWM, with the pages it shares with the server)",
               max(r["vmhwm_kb"] for r in runs["mlferry"]) / 1024, None, None, "", None, unit="MB")
    report.add(f"{what}: publish_version alone (no process start)",
               median([r["publish_seconds"] for r in runs["mlferry"]]), None, None, "", None, unit="s")


@dataclass
class Bench:
    """One model folder copied into one S3 server by any tool, checked, then deleted."""
    source: Path
    files: int
    total: int  # bytes
    env: dict[str, str]  # the local stack's
    aws_env: dict[str, str]
    aws: Path
    moto_pid: int
    tmp: Path
    _warm: object = field(default=None, init=False)

    @property
    def bucket(self) -> str:
        return self.env["MLFERRY_BUCKET"]

    @property
    def child_env(self) -> dict[str, str]:
        return {**self.env, "PYTHONPATH": str(BENCH.parent)}

    @cached_property
    def s3(self):
        from mlferry.stack.s3 import s3_client

        # This stack's keys, given: the process's default session keeps the first stack's.
        return s3_client(self.env["MLFLOW_S3_ENDPOINT_URL"], self.env)

    def warm(self):
        """The warm server, as LocalArgo starts one: Hera imported, then the publish step's module."""
        from mlferry.engine.warm import WarmServer, server_environment

        if self._warm is None:
            self._warm = WarmServer(sys.executable, str(BENCH), server_environment(self.child_env),
                                    preload=["mlferry.steps.publish"], any_cwd=True)
        return self._warm

    def close(self) -> None:
        if self._warm is not None:
            self._warm.close()

    def copy(self, tool: str, round_no: int) -> dict:
        """One timed copy with tool (one of TOOLS): its figures, once the copy was checked."""
        version = f"{round_no * len(TOOLS) + TOOLS.index(tool) + 1}"  # each copy its own; the warm-up is round 0
        prefix = f"models/{MODEL}/{version}/"
        child = {}
        if tool == "mlferry":
            measured, child = self.forked_publish(version)
        elif tool == "mlferry-new-process":
            measured = run_measured([sys.executable, str(BENCH / "publish_child.py"), str(self.source), MODEL,
                                     version], self.child_env)
            child = json.loads(measured.stdout.strip().splitlines()[-1]) if measured.returncode == 0 else {}
        else:
            prefix = f"{AWS_PREFIX}{round_no}/"
            measured = run_measured([str(self.aws), "s3", "cp", "--recursive", "--only-show-errors",
                                     "--endpoint-url", self.env["MLFLOW_S3_ENDPOINT_URL"], str(self.source),
                                     f"s3://{self.bucket}/{prefix}"], self.aws_env)
        if measured.returncode != 0:
            raise RuntimeError(f"{tool} failed ({measured.returncode}):\n{measured.stderr[-3000:]}")
        count, size = stored(self.s3, self.bucket, prefix)
        expected = self.files + (0 if tool == "aws" else 1)  # mlferry adds its manifest
        if count != expected or size < self.total:
            raise RuntimeError(f"{tool} stored {count} objects, {size} bytes under {prefix}; "
                               f"expected {expected} objects, ≥ {self.total} bytes")
        moto_peak = proc_status_kb(self.moto_pid, "VmHWM") / 1024
        delete_prefix(self.s3, self.bucket, prefix)
        say(f"round {round_no or 'warm-up'} {tool:19}: {measured.seconds:6.2f} s, "
            f"{self.total / MB / measured.seconds:6.1f} MiB/s"
            + (f", peak RSS {measured.peak_rss_mb:6.1f} MB" if measured.peak_rss_mb else "")
            + (f" (own VmHWM {child['vmhwm_kb'] / 1024:.1f} MB, publish_version "
               f"{child['publish_seconds']:.2f} s)" if child else ""))
        return {"round": round_no, "seconds": measured.seconds, "peak_rss_mb": measured.peak_rss_mb,
                "objects": count, "bytes": size, "moto_peak_rss_mb": moto_peak, **child}

    def forked_publish(self, version: str) -> tuple[Measured, dict]:
        """The copy as the local executor runs the publish step: a Hera runner call forked from the
        warm server; timed from the request to the child's end."""
        server = self.warm()
        args = self.tmp / f"args-{version}.json"
        args.write_text(json.dumps([{"name": "source_dir", "value": str(self.source)},
                                    {"name": "model", "value": MODEL}, {"name": "version", "value": version}]))
        argv = [sys.executable, "-m", "hera.workflows.runner", "-e", "publish_child:publish_folder", str(args)]
        output: dict[str, bytes] = {}
        started = time.perf_counter()
        proc = server.start(argv, self.child_env, str(BENCH))
        readers = [threading.Thread(target=lambda name, stream: output.__setitem__(name, stream.read()),
                                    args=(name, stream)) for name, stream in (("out", proc.stdout), ("err", proc.stderr))]
        for reader in readers:
            reader.start()
        code = proc.wait()
        for reader in readers:
            reader.join()
        seconds = time.perf_counter() - started
        stdout, stderr = output["out"].decode(), output["err"].decode()
        child = json.loads(stdout.strip().splitlines()[-1]) if code == 0 else {}
        return Measured(seconds, 0.0, code, stdout, stderr), child


def generate_model(root: Path, args: Size) -> tuple[int, int]:
    """Random bytes, written 1 MiB at a time: many small files in subfolders, a few large ones."""
    rng = random.Random(20261126)
    root.mkdir(parents=True)
    (root / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n")
    files, total = 1, (root / "MLmodel").stat().st_size
    for i in range(args.small_files):
        path = root / "shards" / f"{i // 100:03d}" / f"part-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(args.small_kib * 1024))
        files, total = files + 1, total + args.small_kib * 1024
    for i in range(args.large_files):
        with open(root / f"weights-{i}.bin", "wb") as out:
            for _ in range(args.large_mib):
                out.write(rng.randbytes(CHUNK))
        files, total = files + 1, total + args.large_mib * MB
    return files, total


def awscli() -> Path:
    """awscli 1.x in its own venv in the bench cache (created once; pip from the usual index)."""
    venv = cache_dir() / "awscli-venv"
    aws = venv / "bin" / "aws"
    if not aws.exists():
        say(f"installing awscli into {venv} (once)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                              "awscli"], capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"pip install awscli failed:\n{pip.stdout[-2000:]}{pip.stderr[-2000:]}")
    return aws


def aws_environment(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """The stack's credentials, path-style addressing, and no user config or credentials file."""
    config = tmp / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    keep = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**keep, **{k: v for k, v in env.items() if k.startswith("AWS_") or k in ("NO_PROXY", "no_proxy")},
            "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": ""}


def stored(s3, bucket: str, prefix: str) -> tuple[int, int]:
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            count, size = count + 1, size + obj["Size"]
    return count, size


def delete_prefix(s3, bucket: str, prefix: str) -> None:
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                 "Quiet": True})


if __name__ == "__main__":
    sys.exit(main())

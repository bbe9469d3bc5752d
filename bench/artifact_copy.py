"""Artifact copy: mlferry's publish against `aws s3 cp --recursive`, same folder, same S3 server.

    .venv/bin/python bench/artifact_copy.py [--rounds 5] [--quick]

A ~1 GB model folder (2,000 × 64 KiB files and 3 × 280 MiB ones, random bytes) is generated on
local disk, then copied into the local stack's S3 server (moto, on 127.0.0.1) by

- mlferry: ``publish_version`` from a ``file:`` source, in its own process, with the object
  store built as the publish step builds it (bench/publish_child.py). It hashes every file
  for the manifest (sha256) and for what the store must answer (a small file's MD5, checked
  against its PUT's ETag; a large file's parts' SHA-256s, computed beside its upload and
  checked with one HEAD against the SHA-256 the store keeps), confirms the whole prefix with one
  listing and writes its manifest last;
- the baseline: ``aws s3 cp --recursive`` (awscli 1.x, installed into its own throwaway venv
  in the bench cache, since awscli pins botocore versions the project's venv may not have).

Both run under bench/measure.py, which reports each command's wall time (process start
included) and peak RSS. An untimed warm-up round (each tool once) comes first; the measured
rounds then alternate the order (mlferry first, then aws first, …) and the medians are
compared. Each copy is deleted before the next one: moto keeps what it stores, so a server
holding several copies would slow the later ones down.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (BENCH, MB, Report, cache_dir, local_stack, median, proc_status_kb, run_measured,  # noqa: E402
                      say, scratch_dir, stop_on_sigterm, timed)

CHUNK = 1 * MB
MODEL = "bench-artifact-copy"
AWS_PREFIX = "aws-cp/"


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-files", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--large-files", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=280)
    parser.add_argument("--rounds", type=int, default=5, help="each round copies once with each tool")
    parser.add_argument("--quick", action="store_true", help="a tenth of the data, one round (to try the script)")
    args = parser.parse_args()
    if args.quick:
        args.small_files, args.large_mib, args.rounds = args.small_files // 10, args.large_mib // 10, 1

    report = Report("artifact_copy", "artifact copy: mlferry publish_version vs aws s3 cp --recursive")
    aws = awscli()
    aws_version = subprocess.run([str(aws), "--version"], capture_output=True, text=True).stdout.strip()
    say(f"baseline: {aws_version}")

    with scratch_dir("artifact-copy") as tmp:
        tmp = Path(tmp)
        source = tmp / "model"
        with timed() as gen:
            files, total = generate_model(source, args)
        os.sync()  # its writeback would otherwise compete with the first copies
        say(f"generated {files} files, {total / MB:.0f} MiB in {source} ({gen['seconds']:.1f} s)")

        with local_stack(tmp / "stack") as (stack, env):
            bench = Bench(source, files, total, env, aws_environment(env, tmp), aws, stack._state().parts["s3"].pid)
            # One untimed round first: the first copies into a fresh server, right after 1 GB was
            # written, ran up to 50% slower for whichever tool went first, which skewed the medians.
            warm_up = [bench.copy(tool, 0) for tool in ("aws", "mlferry")]
            runs: dict[str, list[dict]] = {"mlferry": [], "aws": []}
            for round_no in range(1, args.rounds + 1):
                for tool in (["mlferry", "aws"] if round_no % 2 else ["aws", "mlferry"]):
                    runs[tool].append(bench.copy(tool, round_no))

    ml_time = median([r["seconds"] for r in runs["mlferry"]])
    aws_time = median([r["seconds"] for r in runs["aws"]])
    ml_rss = max(r["peak_rss_mb"] for r in runs["mlferry"])
    aws_rss = max(r["peak_rss_mb"] for r in runs["aws"])
    ml_own = max(r["vmhwm_kb"] for r in runs["mlferry"]) / 1024
    n = args.rounds
    report.add(f"wall time, {total / MB:.0f} MiB in {files} files (median of {n})", ml_time, aws_time,
               aws_time / ml_time, "≥ 1.00x (aws/mlferry: mlferry not slower)", aws_time / ml_time >= 1.0,
               unit="s")
    paired = sorted(a["seconds"] / m["seconds"] for m, a in zip(runs["mlferry"], runs["aws"]))
    report.add("per-round ratios aws/mlferry (min, median, max)",
               f"{paired[0]:.2f}x, {median(paired):.2f}x, {paired[-1]:.2f}x", None, None,
               "the spread: each round's two copies ran back to back", None)
    report.add("throughput (median)", total / MB / ml_time, total / MB / aws_time, None, "", None, unit="MiB/s")
    report.add(f"peak RSS of the copying process (max of {n})", ml_rss, aws_rss, ml_rss / aws_rss,
               "mlferry < 300 MB", ml_rss < 300, unit="MB")
    report.add("mlferry's own VmHWM (read in the process)", ml_own, None, None, "agrees with the above", None,
               unit="MB")
    report.add("publish_version alone (no interpreter start)",
               median([r["publish_seconds"] for r in runs["mlferry"]]), None, None, "", None, unit="s")
    report.details = {
        "data": {"files": files, "bytes": total, "small_files": args.small_files, "small_kib": args.small_kib,
                 "large_files": args.large_files, "large_mib": args.large_mib, "generate_seconds": gen["seconds"]},
        "baseline": aws_version, "rounds": n, "runs": runs, "warm_up": warm_up,
        "notes": ["wall time includes each tool's interpreter start; both write to the same moto server, "
                  "one copy at a time, each copy deleted before the next",
                  "mlferry also hashes every file, checks what the store holds against it (a small file's "
                  "ETag, a large file's SHA-256 of its parts), lists the prefix once to confirm it and writes a "
                  "manifest; aws s3 cp does none of that"],
    }
    report.finish()
    return 0


@dataclass
class Bench:
    """One model folder copied into one S3 server by either tool, checked, then deleted."""
    source: Path
    files: int
    total: int  # bytes
    env: dict[str, str]  # the local stack's
    aws_env: dict[str, str]
    aws: Path
    moto_pid: int

    @property
    def bucket(self) -> str:
        return self.env["MLFERRY_BUCKET"]

    @cached_property
    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1")

    def copy(self, tool: str, round_no: int) -> dict:
        """One timed copy with tool ("mlferry" or "aws"): its figures, once the copy was checked."""
        if tool == "mlferry":
            version = str(round_no + 1)  # versions start at 1; the warm-up is round 0
            prefix = f"models/{MODEL}/{version}/"
            measured = run_measured([sys.executable, str(BENCH / "publish_child.py"), str(self.source), MODEL,
                                     version], {**self.env, "PYTHONPATH": str(BENCH.parent)})
            child = json.loads(measured.stdout.strip().splitlines()[-1]) if measured.returncode == 0 else {}
        else:
            prefix = f"{AWS_PREFIX}{round_no}/"
            measured = run_measured([str(self.aws), "s3", "cp", "--recursive", "--only-show-errors",
                                     "--endpoint-url", self.env["MLFLOW_S3_ENDPOINT_URL"], str(self.source),
                                     f"s3://{self.bucket}/{prefix}"], self.aws_env)
            child = {}
        if measured.returncode != 0:
            raise RuntimeError(f"{tool} failed ({measured.returncode}):\n{measured.stderr[-3000:]}")
        count, size = stored(self.s3, self.bucket, prefix)
        expected = self.files + (1 if tool == "mlferry" else 0)  # mlferry adds its manifest
        if count != expected or size < self.total:
            raise RuntimeError(f"{tool} stored {count} objects, {size} bytes under {prefix}; "
                               f"expected {expected} objects, ≥ {self.total} bytes")
        moto_peak = proc_status_kb(self.moto_pid, "VmHWM") / 1024
        delete_prefix(self.s3, self.bucket, prefix)
        say(f"round {round_no or 'warm-up'} {tool:7}: {measured.seconds:6.1f} s, "
            f"{self.total / MB / measured.seconds:6.1f} MiB/s, peak RSS {measured.peak_rss_mb:6.1f} MB"
            + (f" (own VmHWM {child['vmhwm_kb'] / 1024:.1f} MB, publish_version "
               f"{child['publish_seconds']:.1f} s)" if child else ""))
        return {"round": round_no, "seconds": measured.seconds, "peak_rss_mb": measured.peak_rss_mb,
                "objects": count, "bytes": size, "moto_peak_rss_mb": moto_peak, **child}


def generate_model(root: Path, args) -> tuple[int, int]:
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

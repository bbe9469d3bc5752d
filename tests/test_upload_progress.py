"""A large publish says how far it got: bytes sent, total and rate, every ~2 s and at the end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from mlferry.steps.store import MB
from tests.test_promote import promote

ROOT = Path(__file__).resolve().parent.parent


def test_progress_lines_come_at_most_every_two_seconds_and_once_at_the_end(caplog):
    from mlferry.steps.publish import UploadProgress

    now = [0.0]
    progress = UploadProgress(20 * MB, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="mlferry.steps.publish"):
        for _ in range(32):  # 32 chunks of 640 KiB, 1/8 s apart: 4 s in all
            now[0] += 0.125
            progress.sent(MB * 5 // 8)
        progress.finish()
    lines = [r for r in caplog.records if hasattr(r, "rate")]
    assert len(lines) == 3  # at 2.0 s and 4.0 s, then the final line
    assert [r.bytes for r in lines] == [10 * MB, 20 * MB, 20 * MB]
    assert all(r.total == 20 * MB for r in lines) and lines[0].rate == 5 * MB
    assert "uploading: 10.0 MB of 20.0 MB (50%)" in lines[0].getMessage()
    assert lines[-1].getMessage().startswith("upload done: 20.0 MB of 20.0 MB in 4.0 s, 5.0 MB/s")


def test_publishing_a_large_model_logs_progress_with_a_rate(registered_model, gitops_remote, tmp_path):
    name, _ = registered_model(alias="production", extra_files={"weights.bin": os.urandom(20 * MB)})
    result = promote(name, "--alias", "production", "--json", "--stack-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    logs = subprocess.run([sys.executable, "-m", "mlferry.cli", "runs", "logs", run, "publish",
                           "--stack-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert logs.returncode == 0, logs.stderr
    records = [json.loads(line) for line in logs.stdout.splitlines() if line.startswith("{")]
    progress = [r for r in records if "rate" in r]
    assert progress, logs.stdout
    final = progress[-1]
    assert final["bytes"] == final["total"] >= 20 * MB and final["rate"] > 0
    assert "MB/s" in final["msg"]

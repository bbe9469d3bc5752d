"""Every command that prints a table also answers --json, with the same facts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mlferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_stack_status_json_has_the_tables_facts(stack):
    table = mlferry("stack", "status", "--dir", str(stack.dir))
    answer = mlferry("stack", "status", "--dir", str(stack.dir), "--json")
    assert answer.returncode == table.returncode == 0, answer.stderr
    found = json.loads(answer.stdout)
    assert found["healthy"] is True and found["dir"] == str(stack.dir)
    rows = [line.split(None, 2) for line in table.stdout.splitlines()]
    assert [[p["part"], p["state"], p["where"]] for p in found["parts"]] == rows[:-1]
    assert ["data", "kept", found["data"]["summary"]] == rows[-1]
    assert {p["part"] for p in found["parts"]} == {"mlflow", "s3", "gitops"}


def test_every_table_command_takes_json():
    for command in (["status"], ["history", "m"], ["runs", "list"], ["runs", "show", "r"], ["promote", "m"],
                    ["stack", "status"]):
        helped = mlferry(*command, "--help")
        assert helped.returncode == 0 and "--json" in helped.stdout, command

"""The local applier against the real local stack: a promotion is served from its published copy,
reported as Argo CD would report it (so the promotion's own verify step passes on a laptop), and
followed through further commits and a removal.

One test, one real `mlflow models serve` (the suite is long already): the promotion runs through
the CLI from the test's own folder, the applier through `mlferry applier` as a user starts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlferry.steps.naming import slugify
from tests.test_one_truth import cli, head, ok


def wait_for(path: Path, check, timeout: float = 90.0) -> dict:
    """The status file's content once `check` holds on it."""
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            found = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            found = {}
        if found and check(found):
            return found
        time.sleep(0.3)
    raise AssertionError(f"{path} never reached the expected state: {json.dumps(found, indent=2)}")


def predict(endpoint: str, rows: list[list[float]]) -> list[float]:
    request = urllib.request.Request(f"{endpoint}/invocations", data=json.dumps({"inputs": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["predictions"]


def answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/ping", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def push(remote: Path, work: Path, change, message: str) -> str:
    """Commit a hand-made change to the GitOps remote (what another promotion, or a person, would push)."""
    clone = work / "clone"
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "pull", "-q"], check=True)
    change(clone)
    author = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "-C", str(clone), *author, "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(clone), *author, "commit", "-qm", message], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q"], check=True)
    return head(remote)


def test_the_applier_serves_a_promotion_and_follows_the_branch_as_argo_cd_would(
        registered_model, gitops_remote, tmp_path):
    name, version = registered_model()
    folder = f"teams/ml/{slugify(name)}/staging"
    work = tmp_path / "work"
    work.mkdir()
    status_file = tmp_path / "applier" / "status.json"
    local = {"MLFERRY_VERIFY": "local", "MLFERRY_APPLIER_STATUS": str(status_file)}
    applier = subprocess.Popen([sys.executable, "-m", "mlferry.cli", "applier", "--status-file", str(status_file)],
                               cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # 0. the promotion's own verify step waits on the applier, and smoke-tests what it serves
        wait_for(status_file, lambda s: s["head"] == head(gitops_remote))
        promoted = ok(cli(work, "promote", name, "--version", version, "--env", "staging", env=local))
        first = head(gitops_remote)
        assert f"verified: answered its input example at {first[:12]}" in promoted, promoted

        # 1. synced at the promotion's commit, healthy, and the endpoint predicts
        found = wait_for(status_file, lambda s: s["folders"].get(folder, {}).get("health") in ("Healthy", "Degraded"))
        served = found["folders"][folder]
        assert (served["revision"], served["sync"], served["health"]) == (first, "Synced", "Healthy"), served
        assert (found["head"], served["version"], served["model"]) == (first, version, name)
        assert len(predict(served["endpoint"], [[1.0, 2.0], [3.0, 4.0]])) == 2

        report = json.loads(ok(cli(work, "status", "--json", env=local)))
        row = next(r for r in report["rows"] if r["folder"] == folder)
        assert row["deployed"]["revision"] == first and row["deployed"]["health"] == "Healthy"

        # 2. another folder, whose published prefix holds no model: Degraded with the error line;
        #    the first folder's revision advances without a restart
        def broken(clone: Path) -> None:
            text = (clone / folder / "deployment.yaml").read_text()
            target = clone / f"teams/ml/{slugify(name)}-broken/staging"
            target.mkdir(parents=True)
            (target / "deployment.yaml").write_text(text.replace(f"/{version}/", "/999/"))

        second = push(gitops_remote, tmp_path, broken, "a model that is not published")
        broken_folder = f"teams/ml/{slugify(name)}-broken/staging"
        found = wait_for(status_file, lambda s: s["folders"].get(broken_folder, {}).get("health") == "Degraded")
        assert found["folders"][folder]["revision"] == second and found["folders"][folder]["health"] == "Healthy"
        assert found["folders"][folder]["endpoint"] == served["endpoint"]  # same server, not restarted
        failed = found["folders"][broken_folder]
        assert failed["revision"] == second and failed["version"] == version
        # the last meaningful log line: the Python exception (MlflowException: No such artifact: 'MLmodel')
        assert "exited with code" in failed["message"] and "Exception: " in failed["message"], failed

        # 3. the folder removed: its server stops
        third = push(gitops_remote, tmp_path, lambda clone: subprocess.run(
            ["git", "-C", str(clone), "rm", "-rq", folder], check=True), "remove the staging folder")
        found = wait_for(status_file, lambda s: s["head"] == third and folder not in s["folders"])
        assert found["folders"][broken_folder]["revision"] == third
        deadline = time.monotonic() + 15
        while answers(served["endpoint"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(served["endpoint"])
    finally:
        applier.send_signal(signal.SIGTERM)
        output = applier.communicate(timeout=60)[0]
    # SIGTERM stops every server it started and withdraws the status
    assert applier.returncode == 0, output
    assert not status_file.exists()

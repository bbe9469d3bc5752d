"""`mlferry history MODEL --env E --at TIME`: which version served then, and who promoted it.

The GitOps remote is a real bare repository. Its past is written the way it happened: commits
made by hand with their own dates (an mlferry commit from before `Training-Run:` and `Workflow:`
existed, a removal, a person's edit), then a commit the commit step makes now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlferry.history import NOT_CREATED, PRESENT, REMOVED, FolderAt, model_history, parse_time
from mlferry.steps.commit import CommitInput, commit_folder, commit_message

FOLDER = "teams/ml/fraud/production"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
T0 = NOW.replace(minute=0, second=0) - timedelta(days=10)  # the first promotion
FILES = {"kustomization.yaml": "resources:\n- deployment.yaml\n- hpa.yaml\n", "deployment.yaml": "v: 1\n",
         "hpa.yaml": "max: 3\n"}
# What the commit step wrote before this change: `Run-Id` was MLflow's training run.
OLD_PROMOTION = ("promote fraud v1 to production\n\nReplace teams/ml/fraud/production with the 3 files rendered for\n"
                 "version 1 of model fraud.\n\nModel: fraud\nVersion: 1\nEnvironment: production\n"
                 "Run-Id: 5e1d0c7a\nTrigger: webhook\n")
OLD_REMOVAL = "remove fraud from production\n\n- fraud from production\n\nTrigger: schedule\n"
V2 = CommitInput(model="fraud", version="2", env="production", folder=FOLDER, files=FILES, run_id="9f86d081",
                 trigger="webhook", workflow="mlferry-promote-x7k2p", alias="production", delivery_id="d-42")


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit_at(clone: Path, when: datetime, who: str, message: str, files: dict[str, str] | None) -> str:
    """Replace the folder with files (None: delete it) in a commit dated `when`; push it."""
    name, email = who.removesuffix(">").split(" <")
    folder = clone / FOLDER
    if folder.exists():
        git("rm", "-rq", FOLDER, cwd=clone)
    for file, text in (files or {}).items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(text)
    git("add", "-A", cwd=clone)
    stamp = when.isoformat()
    git("commit", "-qm", message, cwd=clone, env={"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                                                  "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
                                                  "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp})
    git("push", "-q", "origin", "HEAD:main", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


@pytest.fixture
def past(gitops_remote, tmp_path) -> dict[str, str]:
    """The folder's life: v1 (old trailers), removed, v2 (new trailers), edited by hand, v3 now."""
    clone = tmp_path / "clone"
    git("clone", "-q", str(gitops_remote), str(clone), cwd=tmp_path)
    shas = {
        "v1": commit_at(clone, T0, "mlferry <mlferry@users.noreply.local>", OLD_PROMOTION, FILES),
        "removed": commit_at(clone, T0 + timedelta(days=1), "mlferry <mlferry@users.noreply.local>", OLD_REMOVAL,
                             None),
        "v2": commit_at(clone, T0 + timedelta(days=2), "Ada <ada@example.org>", commit_message(V2), FILES),
        "edit": commit_at(clone, T0 + timedelta(days=3), "human <h@example.org>", "drop the autoscaler\n",
                          {k: v for k, v in FILES.items() if k != "hpa.yaml"}),
    }
    v3 = CommitInput(model="fraud", version="3", env="production", folder=FOLDER, files={"kustomization.yaml": "v3\n"},
                     run_id="aa11", trigger="manual", workflow="mlferry-promote-b2c3d")
    shas["v3"] = commit_folder(v3, str(gitops_remote), "main", environ={
        **os.environ, "MLFERRY_GIT_AUTHOR_NAME": "Ferry Bot", "MLFERRY_GIT_AUTHOR_EMAIL": "bot@example.org"}).sha
    return shas


def at(remote: Path, when: datetime, env: str = "production") -> FolderAt:
    return FolderAt.of(model_history("fraud", env, "ml", str(remote), "main"), when)


def test_each_instant_gets_the_version_then_serving_and_who_promoted_it(gitops_remote, past):
    before = at(gitops_remote, T0 - timedelta(hours=1))
    assert (before.state, before.change, before.next_change.commit) == (NOT_CREATED, None, past["v1"])

    first = at(gitops_remote, T0)  # at or before: the commit's own second counts
    assert (first.state, first.version, first.deploy.commit) == (PRESENT, "1", past["v1"])
    assert (first.deploy.training_run, first.deploy.workflow) == ("5e1d0c7a", "")  # old history: Run-Id
    assert first.next_change.commit == past["removed"]

    gone = at(gitops_remote, T0 + timedelta(days=1, minutes=1))
    assert (gone.state, gone.version, gone.change.commit, gone.change.trigger) == (REMOVED, "", past["removed"],
                                                                                 "schedule")

    second = at(gitops_remote, T0 + timedelta(days=2, hours=1))
    assert (second.state, second.version, second.deploy.author) == (PRESENT, "2", "Ada <ada@example.org>")
    assert (second.deploy.workflow, second.deploy.training_run, second.deploy.alias, second.deploy.delivery_id,
            second.deploy.trigger) == ("mlferry-promote-x7k2p", "9f86d081", "production", "d-42", "webhook")

    edited = at(gitops_remote, T0 + timedelta(days=3, hours=1))  # a hand edit keeps the promoted version
    assert (edited.version, edited.deploy.commit, edited.change.commit) == ("2", past["v2"], past["edit"])
    assert edited.change.kind == "edit" and edited.next_change.commit == past["v3"]

    latest = at(gitops_remote, NOW + timedelta(minutes=5))
    assert (latest.version, latest.deploy.author, latest.deploy.workflow, latest.next_change) == (
        "3", "Ferry Bot <bot@example.org>", "mlferry-promote-b2c3d", None)

    never = at(gitops_remote, NOW, env="staging")
    assert (never.state, never.next_change) == (NOT_CREATED, None)
    assert ": no folder: never deployed there" in never.table().splitlines()[0]


def test_the_answer_reads_plainly(gitops_remote, past):
    second = at(gitops_remote, T0 + timedelta(days=3, hours=1)).table().splitlines()
    assert second[0] == f"fraud in production at {(T0 + timedelta(days=3, hours=1)):%Y-%m-%d %H:%M:%S} UTC: v2"
    assert [line.split(None, 1) for line in second[1:8]] == [
        ["promoted", f"{T0 + timedelta(days=2):%Y-%m-%d %H:%M:%S} UTC"],
        ["commit", f"{past['v2'][:12]} promote fraud v2 to production"],
        ["author", "Ada <ada@example.org>"], ["workflow", "mlferry-promote-x7k2p"], ["trigger", "webhook"],
        ["alias", "production"], ["delivery", "d-42"]]
    assert second[8] == "  training run 9f86d081"
    assert second[9].split()[:2] == ["edited", f"{T0 + timedelta(days=3):%Y-%m-%d}"]
    assert "human <h@example.org>" in second[9] and second[9].endswith("drop the autoscaler")
    assert second[-1].startswith(f"(from {gitops_remote} main@")

    gone = at(gitops_remote, T0 + timedelta(days=1, hours=1)).table().splitlines()
    assert gone[0].endswith(": no folder: it had been removed")
    assert gone[1].split(None, 1) == ["removed", f"{T0 + timedelta(days=1):%Y-%m-%d %H:%M:%S} UTC"]
    early = at(gitops_remote, T0 - timedelta(days=1)).table().splitlines()
    assert early[0].endswith(": no folder: it did not exist yet")
    assert early[1].split()[0] == "next" and early[1].endswith(f"deploy v1, commit {past['v1'][:12]}")


@pytest.mark.parametrize("text, expected", [
    ("2026-12-04T10:00:00Z", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),
    ("2026-12-04 10:00", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),  # no offset: UTC
    ("2026-12-04", datetime(2026, 12, 4, tzinfo=timezone.utc)),
    ("2026-12-04T12:00:00+02:00", datetime(2026, 12, 4, 10, tzinfo=timezone.utc)),
    ("2h ago", NOW - timedelta(hours=2)),
    ("3d ago", NOW - timedelta(days=3)),
    ("45 minutes ago", NOW - timedelta(minutes=45)),
    ("1w ago", NOW - timedelta(weeks=1)),
])
def test_times_in_iso_8601_or_ago(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "3 months ago", "2026-13-01", "", "99999999999d ago"])
def test_a_bad_time_names_the_forms_that_work(text):
    with pytest.raises(ValueError) as error:
        parse_time(text, NOW)
    assert str(error.value).startswith(f"--at {text!r} is not a time: use ISO 8601 (2026-12-04T10:00:00Z, ")
    assert "2h ago" in str(error.value) and "\n" not in str(error.value)


# --- as a user types it -------------------------------------------------------------------------


def mlferry(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MLFERRY_STACK_DIR", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "history", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=environ)


def test_the_cli_answers_from_another_folder(gitops_remote, past, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    when = f"{T0 + timedelta(days=2, hours=1):%Y-%m-%d %H:%M}"
    done = mlferry("fraud", "--env", "production", "--at", when, cwd=work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"fraud in production at {when}:00 UTC: v2\n")
    details = [line.split(None, 1) for line in done.stdout.splitlines()[1:]]
    assert ["author", "Ada <ada@example.org>"] in details and ["workflow", "mlferry-promote-x7k2p"] in details

    done = mlferry("fraud", "--env", "production", "--at", "5d ago", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["state"], answer["version"], answer["deploy"]["commit"], answer["change"]["commit"]) == (
        "present", "2", past["v2"], past["edit"])
    assert answer["deploy"]["workflow"] == "mlferry-promote-x7k2p" and answer["deploy"]["training_run"] == "9f86d081"
    assert answer["next_change"]["version"] == "3"

    done = mlferry("fraud", "--env", "production", "--at", f"{T0 + timedelta(days=1, hours=2):%Y-%m-%d %H:%M}",
                   "--json", cwd=work)
    assert json.loads(done.stdout)["state"] == "removed" and json.loads(done.stdout)["version"] is None


def test_cli_mistakes_are_one_line(gitops_remote, tmp_path):
    done = mlferry("fraud", "--env", "production", "--at", "last tuesday", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "mlferry: error: --at 'last tuesday' is not a time: use ISO 8601 (2026-12-04T10:00:00Z, 2026-12-04 10:00, "
        "2026-12-04; UTC unless an offset is given) or a time ago (30m ago, 2h ago, 3d ago, 1w ago)"]
    done = mlferry("fraud", "--at", "2h ago", cwd=tmp_path)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("mlferry: error: --at needs --env") and "--env ENV --at '2h ago'" in done.stderr

"""What people read when something goes wrong: one line per step, in words, never a JSON log
record or `null`, and a bounded wait for a server that refuses connections (issue 13, points 4, 7).

Real CLI subprocesses against the session's stack; the faults are real (a closed port, unset
variables, a version without artifacts)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from mlferry.engine import load_run
from mlferry.steps.outcome import node_line, readable_failure, readable_failures

ROOT = Path(__file__).resolve().parent.parent
DEAD = "http://127.0.0.1:9"  # nothing listens on port 9: connections are refused at once


def mlferry(*args: str, env: dict | None = None, drop: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=environ)
    return done, time.monotonic() - started


def assert_readable(text: str) -> None:
    """No JSON log record and no `null` anywhere a person reads."""
    assert "{" not in text and '"level"' not in text, text
    assert not re.search(r"\bnull\b", text), text


def run_id(stderr: str) -> str:
    return re.search(r"mlferry runs show (\S+?)\)", stderr).group(1)


# -- the one function ------------------------------------------------------------------------------

def test_a_step_message_becomes_one_line_whatever_it_holds():
    tail = ('Error (exit code 75): {"level": "warning", "msg": "remote: attempt 1/5: refused; retrying in 1.0s"}\n'
            '{"level": "error", "msg": "GitOps remote gave up after 5 attempts (transient: Argo retries it)", '
            '"error_type": "GitOpsUnavailable"}')
    assert readable_failure(tail) == "GitOps remote gave up after 5 attempts"
    # The engine keeps the attempts and the next retry apart from the step's words; one line joins them.
    assert node_line(tail, "Failed", 4) == "GitOps remote gave up after 5 attempts (gave up after 4 attempts)"
    assert node_line(tail, "Failed", 1) == "GitOps remote gave up after 5 attempts"
    assert readable_failure("null") == ""
    assert node_line("null", "Failed", 3) == ""
    assert readable_failure("Error (exit code 1)").startswith("exited with code 1 without saying why")
    pending = 'Error (exit code 75): {"level": "error", "msg": "MLflow refused"}'
    assert node_line(pending, "Pending", 2, "retry 2 of 3 in 10s (gives up in 21s)") == \
        "MLflow refused; retry 2 of 3 in 10s (gives up in 21s)"
    failures = json.dumps([{"displayName": "resolve", "templateName": "resolve", "phase": "Failed",
                            "message": 'Error (exit code 1): {"level": "error", "msg": "no such model"}'}])
    assert readable_failures(failures) == "resolve: no such model"


# -- point 4: messages -----------------------------------------------------------------------------

def test_a_missing_model_fails_with_one_readable_line_everywhere(stack, gitops_remote, unique_name, tmp_path):
    done, _ = mlferry("promote", unique_name, "--version", "1", "--env", "staging", "--stack-dir", str(tmp_path))
    assert done.returncode == 1
    assert_readable(done.stdout)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlferry: error: promotion of {unique_name} to staging failed: resolve: ")
    assert unique_name in last and "exit code" not in last
    assert_readable(last.replace(f"{unique_name}", "M"))
    shown, _ = mlferry("runs", "show", run_id(done.stderr), "--no-logs", "--stack-dir", str(tmp_path))
    assert shown.returncode == 0
    status = next(line for line in shown.stdout.splitlines() if line.startswith("Status:"))
    assert status.startswith("Status:    Failed  resolve: ")
    assert_readable(shown.stdout)


def test_mlflow_refusing_connections_fails_within_the_deadline_and_says_so(stack, gitops_remote, unique_name,
                                                                           tmp_path):
    done, took = mlferry("promote", unique_name, "--version", "1", "--env", "staging", "--stack-dir", str(tmp_path),
                         env={"MLFLOW_TRACKING_URI": DEAD, "MLFERRY_CONNECT_DEADLINE": "20"})
    assert done.returncode == 1
    run = load_run(tmp_path / "runs", run_id(done.stderr))
    # The run, failure report included, within the deadline and a few step start-ups; the command
    # adds its own start-up (generating the templates), slow on a loaded machine.
    assert run.duration < 45 and took < 75, f"run {run.duration:.0f}s, command {took:.0f}s"
    assert_readable(done.stdout)
    for line in (line for line in done.stdout.splitlines() if "Pending" in line and "retry" in line):
        assert f"MLflow at {DEAD} refused the connection" in line
        assert re.search(r"retry \d of 3 in \d+s \(gives up in \d+s\)$", line), line
    last = done.stderr.strip().splitlines()[-1]
    assert f"resolve: MLflow at {DEAD} refused the connection" in last
    assert_readable(last)
    # The failure report tried the dead server once, without retries of its own.
    report = next(t for t in run.tasks if t.name.endswith("report-failure"))
    assert report.attempts == 1 and report.phase == "Succeeded"


def test_each_retry_says_what_failed_which_retry_it_is_and_how_long_is_left(tmp_path):
    from mlferry.cli import print_event
    from mlferry.engine import load, new_run_dir, run

    say = ('import json, sys; print(json.dumps({"level": "error", "msg": "MLflow at http://x refused the connection",'
           ' "error_type": "MlflowUnreachable"}), file=sys.stderr); sys.exit(75)')
    plan = load({"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "t"},
                 "spec": {"entrypoint": "main", "templates": [{
                     "name": "main", "container": {"image": "python:3.11", "command": [sys.executable, "-c", say]},
                     "retryStrategy": {"limit": "3", "retryPolicy": "Always",
                                       "backoff": {"duration": "1s", "factor": "2", "maxDuration": "2m"}}}]}})
    events = []
    started = time.monotonic()
    result = run(plan, {}, run_dir=new_run_dir(tmp_path / "runs", "t-"), cwd=tmp_path, lock_dir=tmp_path / "locks",
                 on_event=events.append, retry_budget=3)
    assert time.monotonic() - started < 15
    pending = [e for e in events if e.phase == "Pending" and e.message]
    assert pending and re.fullmatch(r"retry 1 of 3 in 1s \(gives up in \d+s\)", pending[0].retry)
    assert "MLflow at http://x refused the connection" in pending[0].message
    main = result.task("main")
    assert result.phase == "Failed" and main.attempts < 4  # the budget, not the limit, ended it
    assert node_line(main.message, main.phase, main.attempts).startswith("MLflow at http://x refused the connection "
                                                                         "(gave up after ")

    import contextlib
    import io
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        for event in events:
            print_event(event)
    assert "MLflow at http://x refused the connection; retry 1 of 3 in 1s (gives up in" in shown.getvalue()
    assert_readable(shown.getvalue())


def test_an_unreachable_git_remote_shows_the_final_error_not_the_first_retry(
        registered_model, gitops_remote, tmp_path):
    name, version = registered_model()
    done, took = mlferry("promote", name, "--version", version, "--env", "staging", "--stack-dir", str(tmp_path),
                         env={"MLFERRY_GITOPS_REPO": "http://127.0.0.1:9/gitops.git", "MLFERRY_CONNECT_DEADLINE": "20"})
    assert done.returncode == 1
    assert took < 60, f"took {took:.0f}s"
    assert_readable(done.stdout)
    last = done.stderr.strip().splitlines()[-1]
    assert "commit: " in last and "attempt 1/" not in last and "retrying in" not in last
    assert_readable(last)
    tags = MlflowClient().get_model_version(name, version).tags
    error = tags["mlferry.staging.error"]
    assert error.startswith("commit: ") and "attempt 1/" not in error
    assert_readable(error)


def test_without_the_s3_variables_it_says_how_to_set_them(stack, gitops_remote, unique_name, tmp_path):
    done, _ = mlferry("promote", unique_name, "--version", "1", "--env", "staging", "--stack-dir", str(tmp_path),
                      drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert done.returncode == 1
    error = done.stderr.strip()
    assert len(error.splitlines()) == 1
    assert error.count("AWS_ACCESS_KEY_ID") == 1, error
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set" in error
    assert f"mlferry stack up --dir {tmp_path}" in error
    assert f'eval "$(mlferry stack env --dir {tmp_path})"' in error


def test_a_stopped_stack_names_its_folder_in_the_hint(tmp_path):
    (tmp_path / "stack.json").write_text(json.dumps({"parts": {}}))  # what `stack down` leaves
    done, _ = mlferry("promote", "m", "--version", "1", "--env", "staging", "--stack-dir", str(tmp_path),
                      drop=("MLFLOW_TRACKING_URI", "MLFERRY_STACK_DIR"))
    assert done.returncode == 1
    error = done.stderr.strip()
    assert f"mlferry stack up --dir {tmp_path}" in error and f"mlferry stack env --dir {tmp_path}" in error


def test_a_version_without_artifacts_says_so(stack, gitops_remote, unique_name, tmp_path):
    client = MlflowClient()
    client.create_registered_model(unique_name)
    run = client.create_run(client.create_experiment(unique_name) if not client.get_experiment_by_name(unique_name)
                            else client.get_experiment_by_name(unique_name).experiment_id)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(unique_name, f"{run.info.artifact_uri}/model", run.info.run_id).version
    done, _ = mlferry("promote", unique_name, "--version", version, "--env", "staging", "--stack-dir", str(tmp_path),
                      env={"MLFERRY_CONNECT_DEADLINE": "5"})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "has no artifacts" in last and "answered 500" not in last
    assert_readable(done.stdout)


# -- point 7: reconcile's output -------------------------------------------------------------------

def test_reconcile_prints_one_table_and_a_summary(registered_model, gitops_remote, tmp_path, unique_name):
    alias = f"prod-{unique_name[-8:]}"
    (tmp_path / "mlferry.yaml").write_text(f"environments:\n  production: {{aliases: [{alias}]}}\n")
    long_name = f"{unique_name}-a-model-name-far-longer-than-any-table-column-{'x' * 30}"
    registered_model(long_name, alias=alias)
    args = ("reconcile", "--stack-dir", str(tmp_path), "--config", str(tmp_path / "mlferry.yaml"))

    done, _ = mlferry(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "STEP" not in out and "Name:" not in out  # the live lines are the only table
    assert "1 promoted, 0 pruned, 0 held, 0 kept, 0 unchanged, 0 failed" in out
    assert "evaluated false" not in out and "Skipped" not in out and "Omitted" not in out
    assert_readable(out)
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert rows and all(len(line) > 50 and line[50] == " " for line in rows)
    phases = {line.index(word) for line in rows for word in ("Succeeded", "Running") if f" {word}" in line}
    assert len(phases) == 1, out  # the phase column stays one column, long names or not

    again, _ = mlferry(*args)
    assert "0 promoted, 0 pruned, 0 held, 0 kept, 1 unchanged, 0 failed" in again.stdout

    verbose, _ = mlferry("-v", *args[:1], *args[1:])
    assert "Skipped" in verbose.stdout or "Omitted" in verbose.stdout or "evaluated false" in verbose.stdout

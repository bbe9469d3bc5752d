"""No credential in git, logs, workflow parameters, run records or generated YAML."""

import os
import subprocess
import sys
from pathlib import Path

from mlferry.generate import GENERATED_DIR

ROOT = Path(__file__).resolve().parent.parent
PLANTED_TOKEN = "ghp_plantedTestToken0123456789abcdefXYZ"
PLANTED_MLFLOW_TOKEN = "mlf_plantedTrackingToken9876543210"  # the test server ignores it; the steps send it
PLANTED_SSH_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAplantedSshKeyLine0123456789\n"
                   "-----END OPENSSH PRIVATE KEY-----\n")


def everything_under(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_planted_credentials_appear_nowhere(registered_model, gitops_remote, tmp_path):
    name, _ = registered_model(alias="production")
    env = {**os.environ, "MLFERRY_GIT_TOKEN": PLANTED_TOKEN, "MLFLOW_TRACKING_TOKEN": PLANTED_MLFLOW_TOKEN,
           "MLFERRY_GIT_SSH_PRIVATE_KEY": PLANTED_SSH_KEY}
    stack_dir = tmp_path / "local"
    done = subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", name, "--alias", "production",
                           "--env", "production", "--stack-dir", str(stack_dir)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    # A failing run too: errors are where credentials tend to leak.
    failed = subprocess.run([sys.executable, "-m", "mlferry.cli", "promote", name, "--alias", "nope",
                             "--env", "production", "--stack-dir", str(stack_dir)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert failed.returncode == 1

    secrets = {
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "MLFERRY_WEBHOOK_SECRET": os.environ["MLFERRY_WEBHOOK_SECRET"],
        "MLFERRY_GIT_TOKEN": PLANTED_TOKEN,
        "MLFLOW_TRACKING_TOKEN": PLANTED_MLFLOW_TOKEN,
        "MLFERRY_GIT_SSH_PRIVATE_KEY": PLANTED_SSH_KEY.splitlines()[1],
    }
    git_history = subprocess.run(["git", "--git-dir", str(gitops_remote), "log", "-p", "--all"],
                                 capture_output=True, text=True, check=True).stdout
    places = {
        "git history": git_history,
        "run records, parameters and task logs": everything_under(stack_dir / "runs"),
        "generated Argo YAML": everything_under(GENERATED_DIR),
        "CLI output": done.stdout + done.stderr + failed.stdout + failed.stderr,
    }
    assert "mlferry.io/model-name" in git_history  # the scan reads real content
    for place, text in places.items():
        for what, value in secrets.items():
            assert value not in text, f"{what} leaked into {place}"


def test_a_token_in_the_gitops_url_stays_out_of_the_receivers_log(stack, tmp_path):
    """A remote given as https://user:token@host/… (as some CI systems hand it) is logged redacted."""
    import signal
    import time

    from mlferry.stack.processes import free_port

    url = f"https://x-access-token:{PLANTED_TOKEN}@git.example.invalid/team/gitops.git"
    env = {**os.environ, "MLFERRY_GITOPS_REPO": url}
    receiver = subprocess.Popen([sys.executable, "-m", "mlferry.cli", "events", "serve", "--port", str(free_port()),
                                 "--stack-dir", str(tmp_path / "local")], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, seen = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "listening on" not in seen:
        seen += receiver.stdout.readline()
    receiver.send_signal(signal.SIGTERM)
    out, _ = receiver.communicate(timeout=60)
    log = seen + out
    assert "listening on" in log and "git.example.invalid/team/gitops.git" in log, log
    assert PLANTED_TOKEN not in log

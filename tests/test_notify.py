"""steps/notify.py: a failed verification or a rollback reaches people as one Slack-compatible POST,
and a notification that cannot be delivered neither fails the run nor leaks the URL (a secret).

Against a real HTTP listener on loopback: what it receives is what Slack's incoming webhook would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from mlferry.steps.notify import NotifyInput, commit_url, message, notify, run_url, send
from mlferry.workflows.bundle import Bundle
from mlferry.workflows.tasks import NOTIFY, STEP_CREDENTIALS, credential_env
from tests.loopback import LoopbackServer, QuietHandler

ROOT = Path(__file__).resolve().parent.parent
SECRET_PATH = "/services/T0000/B0000/XyZsecretWebhookToken"
SHA = "4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
REPO_WITH_TOKEN = "https://x-access-token:ghp_repoToken123@git.example.com/platform/gitops.git"
# Argo's {{workflow.failures}}: the failed nodes, each with its pod's last log lines as message.
FAILURES = json.dumps([{
    "displayName": "verify", "templateName": "verify", "phase": "Failed", "podName": "mlferry-promote-x7k2p-verify-1",
    "finishedAt": "2026-12-05T10:09:58Z",
    "message": 'Error (exit code 1): {"time": "2026-12-05T10:09:58", "level": "error", "logger": "mlferry.step.verify", '
               '"msg": "fraud-wine-quality-production is Degraded after 600 s: Deployment/wine-quality-production: '
               'exceeded its progress deadline", "step": "verify", "transient": false}'}])


class Listener:
    """A loopback HTTP server that records each POST (path, headers, JSON body) and answers `code`."""

    def __init__(self, code: int = 200, body: bytes = b"ok") -> None:
        self.received: list[dict[str, Any]] = []
        listener = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                listener.received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                          "body": json.loads(data)})
                self.reply(code, body, None)

        self.server = LoopbackServer(Handler)
        self.url = self.server.url + SECRET_PATH
        self.close = self.server.close


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def step_env(monkeypatch, listener) -> Listener:
    """The notify step's pod: the URL from its Secret, the settings from the ConfigMap, an Argo UI."""
    monkeypatch.setenv("MLFERRY_NOTIFY_URL", listener.url)
    monkeypatch.setenv("MLFERRY_ARGO_UI_URL", "https://argo.example.com/")
    monkeypatch.setenv("MLFERRY_SETTINGS", yaml.safe_dump({"team": "fraud", "gitops_repo": REPO_WITH_TOKEN}))
    monkeypatch.delenv("MLFERRY_CONFIG", raising=False)
    monkeypatch.delenv("MLFERRY_GITOPS_REPO", raising=False)  # the session's local stack exports its own
    monkeypatch.chdir(ROOT / "tests")  # no ./mlferry.yaml here
    for proxy in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    return listener


def failed_verification() -> NotifyInput:
    return NotifyInput(model="wine-quality", version="3", env="production", status="Failed", failures=FAILURES,
                       restored="v2 (@production moved back)", commit=SHA, workflow="mlferry-promote-x7k2p",
                       namespace="fraud")


def test_the_listener_receives_a_slack_payload_with_everything_people_need(step_env, caplog):
    caplog.set_level(logging.DEBUG)
    assert notify(failed_verification()).delivered is True
    [post] = step_env.received
    assert post["path"] == SECRET_PATH and post["content_type"] == "application/json"
    payload = post["body"]
    assert set(payload) == {"text", "blocks"}
    text = payload["text"]
    assert "\n" not in text and text == (
        "mlferry: wine-quality v3 in production failed: verify: fraud-wine-quality-production is Degraded after "
        "600 s: Deployment/wine-quality-production: exceeded its progress deadline; "
        "restored v2 (@production moved back)")
    assert all(block["type"] == "section" for block in payload["blocks"])
    texts = [o for b in payload["blocks"] for o in ([b["text"]] if "text" in b else b["fields"])]
    assert all(t["type"] == "mrkdwn" and 0 < len(t["text"]) <= 3000 for t in texts)
    shown = "\n".join(t["text"] for t in texts)
    for field in ("*Model*\nwine-quality", "*Version*\n3", "*Environment*\nproduction",
                  "*Restored*\nv2 (@production moved back)", "exceeded its progress deadline"):
        assert field in shown
    assert "*Run*: <https://argo.example.com/workflows/fraud/mlferry-promote-x7k2p|mlferry-promote-x7k2p>" in shown
    assert f"*Commit*: <https://git.example.com/platform/gitops/commit/{SHA}|{SHA[:12]}>" in shown
    everything = json.dumps(payload) + caplog.text
    assert "ghp_repoToken123" not in everything and "x-access-token" not in everything  # the repo's credential
    assert "XyZsecretWebhookToken" not in caplog.text


def test_a_rollback_without_failure_and_a_failure_without_restore_say_so():
    rolled_back = message("wine-quality", "3", "production", failed="", restored="v2 (@production moved back)")
    assert rolled_back["text"] == "mlferry: wine-quality v3 in production rolled back; restored v2 (@production moved back)"
    nothing = message("wine-quality", "3", "staging", failed="verify: no answer from /invocations", commit=SHA,
                      gitops_repo="git@git.example.com:platform/gitops.git")
    assert nothing["text"].endswith("; nothing restored")
    shown = json.dumps(nothing["blocks"])
    assert "*Restored*\\nnothing restored" in shown
    assert f"*Commit*: {SHA}" in shown  # ssh: no page to link, the sha in full
    assert "*Run*" not in shown  # no workflow named


def test_registry_text_cannot_ping_the_channel_or_forge_a_link():
    """Slack reads <!channel>, <@U…> and <url|label> in mrkdwn; words from the registry or a log are shown."""
    payload = message("<!channel> model", "1", "staging", failed="x <https://evil.example|click> & y")
    raw = json.dumps(payload)
    assert "<!channel>" not in raw and "<https://evil" not in raw
    assert "&lt;!channel&gt; model" in payload["text"] and "&amp; y" in payload["text"]


def test_links():
    assert run_url("https://argo.example.com/", "ml", "mlferry-promote-abc") == \
        "https://argo.example.com/workflows/ml/mlferry-promote-abc"
    assert run_url("", "ml", "mlferry-promote-abc") == ""
    assert commit_url("https://gitlab.example.com:8443/group/sub/gitops/", SHA) == \
        f"https://gitlab.example.com:8443/group/sub/gitops/commit/{SHA}"
    assert commit_url(REPO_WITH_TOKEN, SHA) == f"https://git.example.com/platform/gitops/commit/{SHA}"
    assert commit_url("http://git.example.com/platform/gitops.git", SHA) == ""  # plain http: no link
    assert commit_url("/srv/gitops.git", SHA) == commit_url("ssh://git@host/gitops.git", SHA) == ""
    assert commit_url(REPO_WITH_TOKEN, "not-a-sha") == ""


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"  # nothing listens there any more


def test_an_unreachable_url_logs_one_line_without_the_url_and_returns_false(caplog):
    caplog.set_level(logging.DEBUG)
    assert send(closed_port_url(), message("wine-quality", "3", "production", "verify: Degraded")) is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert warnings[0].getMessage() == "notification not delivered to 127.0.0.1: ConnectionRefusedError"
    assert "XyZsecretWebhookToken" not in caplog.text and "/services/" not in caplog.text


def test_only_http_urls_are_posted_to(tmp_path, caplog):
    secret_file = tmp_path / "secret"
    secret_file.write_text("x")
    assert send(f"file://{secret_file}", {"text": "x"}) is False
    assert [r.getMessage() for r in caplog.records] == [
        "notification not delivered: the notification URL is not http(s)"]


def test_a_refusal_is_logged_with_the_receivers_code_not_the_url(caplog):
    refusing = Listener(code=404, body=b"no_service")
    try:
        assert send(refusing.url, {"text": "x"}) is False
    finally:
        refusing.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["notification not delivered to 127.0.0.1: HTTP 404 (no_service)"]


def test_without_a_url_the_step_says_so_and_sends_nothing(step_env, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MLFERRY_NOTIFY_URL", "")
    assert notify(failed_verification()).delivered is False
    assert step_env.received == []
    assert "no notification is configured (MLFERRY_NOTIFY_URL is empty)" in caplog.text


def test_the_step_runs_under_heras_runner_as_argo_runs_it(step_env, tmp_path):
    """As the container runs it: inputs as Argo passes them, the output parameter written to a file,
    and a delivery failure is not a step failure (exit 0)."""
    inputs = failed_verification().model_dump()
    for case, url in (("delivered", step_env.url), ("undelivered", closed_port_url())):
        folder = tmp_path / case
        folder.mkdir()
        (folder / "args.json").write_text(json.dumps([{"name": k, "value": v} for k, v in inputs.items()]))
        env = {**os.environ, "hera__outputs_directory": str(folder / "out"), "MLFERRY_NOTIFY_URL": url,
               "MLFERRY_LOG_FORMAT": "json"}
        done = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "mlferry.steps.notify:notify",
                               str(folder / "args.json")], cwd=folder, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert (folder / "out" / "parameters" / "delivered").read_text() == ("true" if case == "delivered" else "false")
        assert "XyZsecretWebhookToken" not in done.stdout + done.stderr
    assert len(step_env.received) == 1


def test_the_step_gets_the_notification_secret_and_nothing_else():
    bundle = Bundle()
    assert STEP_CREDENTIALS["notify"] == frozenset({NOTIFY})
    [env] = credential_env(bundle, STEP_CREDENTIALS["notify"])
    assert (env.name, env.secret_name, env.secret_key, env.optional) == (
        "MLFERRY_NOTIFY_URL", "mlferry-notify", "MLFERRY_NOTIFY_URL", True)
    assert bundle.secrets.notify == "mlferry-notify"
    helpers = (ROOT / "charts" / "mlferry" / "templates" / "_helpers.tpl").read_text()
    assert re.search(r"^mlferry-notify: \{keys: \[MLFERRY_NOTIFY_URL\], optional: true\}$", helpers, re.M)


def test_a_failed_verification_is_told_from_give_ups_own_line():
    from mlferry.steps.notify import from_give_up

    line = ("v3 of wine-quality failed verification in production: a prediction is nan: the model answers "
            "garbage for its own input example; restored v2 (the alias moved back)")
    failures = json.dumps([{"displayName": "give-up", "templateName": "give-up", "phase": "Failed",
                            "message": f"Error (exit code 1): {line}"}])
    told = from_give_up(NotifyInput(model="wine-quality", env="production", status="Failed", failures=failures))
    assert (told.version, told.restored) == ("3", "v2 (the alias moved back)")
    assert told.failures == "a prediction is nan: the model answers garbage for its own input example"
    text = message(told.model, told.version, told.env, told.failures, told.restored)["text"]
    assert text == ("mlferry: wine-quality v3 in production failed: a prediction is nan: the model answers garbage "
                    "for its own input example; restored v2 (the alias moved back)")

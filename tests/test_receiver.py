"""`mlferry events serve` and `mlferry webhook register|test` end to end: the session's MLflow server
posts alias events to a real receiver process, which promotes into the test's GitOps remote; forged,
stale, unsigned, malformed and replayed requests, sent straight to the receiver, start nothing.

MLflow webhooks are global to the server: each test registers its own (unique name, its own receiver
on its own port) and deletes it at the end, and every assertion looks at the test's own model only.
"""

import json
from datetime import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from email.message import Message
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from mlferry import webhooks
from mlferry.local import LocalArgo
from mlferry.receiver import Receiver
from mlferry.receiver_http import MAX_BODY_BYTES
from mlferry.sensors.objects import sensor, trigger_parameters
from mlferry.steps.naming import slugify
from mlferry.steps.settings import Settings
from tests.conftest import git_log
from mlferry.workflows.bundle import Bundle

ROOT = Path(__file__).resolve().parent.parent
COMMIT_WITHIN = 60.0  # seconds from the alias move to the commit on the GitOps remote (~5 s when idle)


# --- helpers -----------------------------------------------------------------------------------

def mlferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, runs: Path):
        self.proc, self.port, self.log, self.runs = proc, port, log, runs
        self.url = f"http://127.0.0.1:{port}/mlflow"

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_idle(self, finished: int, timeout: float = COMMIT_WITHIN) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.health()
            if state["finished"] >= finished and not state["queued"] and not state["running"]:
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"the receiver did not finish {finished} run(s) in {timeout:.0f}s: {state}\n{self.text()}")
            time.sleep(0.2)


@pytest.fixture
def receiver(stack, gitops_remote, tmp_path):
    """`mlferry events serve` on a free loopback port, promoting into this test's GitOps remote."""
    port, log, local = free_port(), tmp_path / "receiver.log", tmp_path / "local"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlferry.cli", "events", "serve", "--port", str(port),
                                 "--stack-dir", str(local)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=dict(os.environ))
    running = ReceiverProcess(proc, port, log, local / "runs")
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the receiver exited with {proc.returncode}:\n{running.text()}")
        try:
            running.health()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the receiver did not answer within 30s:\n{running.text()}")
            time.sleep(0.1)
    yield running
    if proc.poll() is None:
        running.stop()


@pytest.fixture
def webhook_name():
    """A webhook name of this test's own, deleted at the end whatever happened."""
    name = f"mlferry-test-{uuid.uuid4().hex[:8]}"
    yield name
    webhooks.delete(name)


def alias_event(model: str, alias: str, version: str | None = None, action: str = "created") -> dict:
    data = {"name": model, "alias": alias, **({"version": version} if version else {})}
    return {"entity": "model_version_alias", "action": action,
            "timestamp": "2026-01-01T00:00:00+00:00", "data": data}


def signed_request(event: dict | bytes, *, secret: str | None = None, timestamp: int | None = None,
                   content_type: str = "application/json") -> tuple[bytes, dict]:
    """Body and headers as MLflow sends them (mlflow.webhooks.delivery)."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    delivery_id, sent = str(uuid.uuid4()), str(int(time.time()) if timestamp is None else timestamp)
    signature = _generate_hmac_signature(secret or os.environ["MLFERRY_WEBHOOK_SECRET"], delivery_id, sent,
                                         body.decode("utf-8", "replace"))
    return body, {"Content-Type": content_type, "X-MLflow-Delivery-Id": delivery_id,
                  "X-MLflow-Timestamp": sent, "X-MLflow-Signature": signature}


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def folder_commits(remote: Path, folder: str) -> list[str]:
    return git_log(remote, "--format=%H", "main", "--", folder).split()


def wait_for_commits(remote: Path, folder: str, count: int, receiver: ReceiverProcess) -> float:
    """Seconds until `folder` has `count` commits on the remote's main branch."""
    start = time.monotonic()
    while len(folder_commits(remote, folder)) < count:
        if time.monotonic() - start > COMMIT_WITHIN:
            pytest.fail(f"no commit #{count} in {folder} within {COMMIT_WITHIN:.0f}s; receiver log:\n{receiver.text()}")
        time.sleep(0.2)
    return time.monotonic() - start


def show(remote: Path, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{path}"], capture_output=True,
                          text=True, check=True).stdout


def running_pods(runs: Path) -> list[str]:
    """Tasks whose process runs now, in any local run under `runs`."""
    names = []
    for record in runs.glob("*/run.json"):
        try:
            tasks = json.loads(record.read_text())["tasks"]
        except (OSError, ValueError):
            continue
        names += [t["name"] for t in tasks if t["type"] == "Pod" and t["phase"] == "Running"]
    return names


def deployed_uri(remote: Path, folder: str) -> str:
    deployment = yaml.safe_load(show(remote, f"{folder}/deployment.yaml"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return next(a for a in container.get("args", []) + container["command"] if a.startswith("s3://"))


# --- end to end: MLflow → receiver → GitOps remote --------------------------------------------------

def test_setting_then_moving_the_alias_commits_each_version(registered_model, gitops_remote, receiver,
                                                            webhook_name):
    registered = mlferry("webhook", "register", "--url", receiver.url, "--name", webhook_name)
    assert registered.returncode == 0, registered.stderr
    name, first = registered_model()
    slug, client = slugify(name), MlflowClient()
    folder = f"teams/ml/{slug}/production"

    moved = time.monotonic()
    client.set_registered_model_alias(name, "production", first)
    latency = wait_for_commits(gitops_remote, folder, 1, receiver)
    print(f"\nalias production -> v{first}: commit after {latency:.1f}s (measured from the alias move "
          f"{time.monotonic() - moved:.1f}s)")
    assert deployed_uri(gitops_remote, folder) == f"s3://mlferry/models/{slug}/{first}/"
    message = git_log(gitops_remote, "-1", "--format=%B", "main")
    assert f"Model: {name}" in message and f"Version: {first}" in message and "Trigger: webhook" in message

    _, second = registered_model(name)
    receiver.wait_idle(finished=1)  # time the second move from an idle receiver
    client.set_registered_model_alias(name, "production", second)
    latency = wait_for_commits(gitops_remote, folder, 2, receiver)
    print(f"alias production -> v{second}: commit after {latency:.1f}s")
    assert deployed_uri(gitops_remote, folder) == f"s3://mlferry/models/{slug}/{second}/"
    head = folder_commits(gitops_remote, folder)[0]
    receiver.wait_idle(finished=2)  # the report step tags the version after the commit
    assert client.get_model_version(name, second).tags["mlferry.production.commit"] == head

    log = receiver.text()
    assert log.count(f"accepted {name} alias production created → production") == 2
    assert log.count(" Succeeded in ") == 2 and f"{folder}/ commit {head[:12]}" in log
    assert len(list(receiver.runs.iterdir())) == 2

    # Removing the alias goes through the same workflow, which retires the folder.
    client.delete_registered_model_alias(name, "production")
    latency = wait_for_commits(gitops_remote, folder, 3, receiver)
    print(f"alias production deleted: commit after {latency:.1f}s")
    gone = subprocess.run(["git", "--git-dir", str(gitops_remote), "cat-file", "-e", f"main:{folder}"],
                          capture_output=True)
    assert gone.returncode != 0, f"{folder} is still on main"
    receiver.wait_idle(finished=3)
    assert f"accepted {name} alias production deleted → production" in receiver.text()


def test_register_twice_leaves_one_webhook_and_test_reaches_the_receiver(receiver, webhook_name):
    first = mlferry("webhook", "register", "--url", receiver.url, "--name", webhook_name)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"created webhook {webhook_name} (")
    assert "model_version_alias.created, model_version_alias.deleted -> " + receiver.url in first.stdout
    for line in ("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true",
                 "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https"):
        assert line in first.stdout
    second = mlferry("webhook", "register", "--url", receiver.url, "--name", webhook_name)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"updated webhook {webhook_name} (")
    found = webhooks.find(webhook_name)
    assert len(found) == 1 and found[0].url == receiver.url

    tested = mlferry("webhook", "test", "--name", webhook_name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # MLflow's example event names alias `example_alias`: signed correctly, selects no environment.
    assert f"webhook {webhook_name} -> {receiver.url}: HTTP 200 " in tested.stdout
    assert json.loads(tested.stdout.split("HTTP 200 ", 1)[1])["status"] == "ignored"
    assert "ignored delivery" in receiver.text() and "'example_alias'" in receiver.text()
    assert receiver.health()["finished"] == 0


# --- straight to the receiver -------------------------------------------------------------------

def test_forged_stale_unsigned_and_malformed_requests_start_nothing(registered_model, gitops_remote, receiver,
                                                                    s3):
    name, version = registered_model(alias="production")
    event = alias_event(name, "production", version)
    valid_body, valid = signed_request(event)
    cases = {
        "forged": (*signed_request(event, secret="not-the-secret"), 401),
        "stale": (*signed_request(event, timestamp=int(time.time()) - 301), 401),
        "unsigned": (valid_body, {k: v for k, v in valid.items() if k != "X-MLflow-Signature"}, 401),
        "changed on the way": (valid_body.replace(b'"production"', b'"staging"'), valid, 401),
        "malformed": (*signed_request(b'{"entity": "model_version_alias", '), 400),
        "a duplicate key": (*signed_request(json.dumps(event).replace('"data": {', '"data": {"name": "victim", ', 1)
                                            .encode()), 400),
        "wrong content type": (*signed_request(event, content_type="text/plain"), 415),
        "oversized": (b" " * (MAX_BODY_BYTES + 1), valid, 413),
        # far more than a socket buffers: answered 413, not a broken pipe, because the body is read first
        "four times oversized": (b" " * (4 * MAX_BODY_BYTES), valid, 413),
    }
    for case, (body, headers, expected) in cases.items():
        status, answer = post(receiver.url, body, headers)
        assert status == expected, (case, answer)
        assert set(answer) == {"error"} and answer["error"], case
    status, answer = post(receiver.url, *signed_request(alias_event(name, "canary", version)))
    assert (status, answer["status"]) == (200, "ignored") and "'canary' selects no environment" in answer["reason"]
    assert post(receiver.url.replace("/mlflow", "/other"), *signed_request(event))[0] == 404

    time.sleep(1.0)  # anything wrongly queued would be running by now
    # Idle says so: nothing running is an empty list, never a bare null.
    assert receiver.health() == {"status": "ok", "path": "/mlflow", "queued": 0, "running": [],
                                 "parallelism": 4, "finished": 0}
    assert s3.list_objects_v2(Bucket="mlferry", Prefix=f"models/{slugify(name)}/").get("KeyCount") == 0
    assert git_log(gitops_remote, "--format=%s", "main").splitlines() == ["Initial commit"]
    assert not receiver.runs.exists() or not any(receiver.runs.iterdir())
    log = receiver.text()
    assert log.count(" 401 rejected delivery ") == 4 and log.count(" 413 ") == 2 and " 415 " in log


def test_one_delivery_sent_five_times_commits_once(registered_model, gitops_remote, receiver):
    name, version = registered_model(alias="production")
    folder = f"teams/ml/{slugify(name)}/production"
    body, headers = signed_request(alias_event(name, "production", version))
    answers = [post(receiver.url, body, headers) for _ in range(5)]
    assert answers[0][0] == 202 and answers[0][1]["status"] == "accepted"
    assert [(status, a["status"]) for status, a in answers[1:]] == [(200, "duplicate")] * 4
    wait_for_commits(gitops_remote, folder, 1, receiver)
    assert receiver.wait_idle(finished=1)["finished"] == 1
    assert len(folder_commits(gitops_remote, folder)) == 1
    assert len(git_log(gitops_remote, "--format=%H", "main").split()) == 2
    assert len(list(receiver.runs.iterdir())) == 1


def test_sigterm_stops_the_running_promotion_and_exits_cleanly(registered_model, gitops_remote, receiver):
    name, version = registered_model(alias="production")
    body, headers = signed_request(alias_event(name, "production", version))
    assert post(receiver.url, body, headers)[0] == 202
    deadline = time.monotonic() + 15
    while not running_pods(receiver.runs):  # stop it in the middle of a step
        assert time.monotonic() < deadline, receiver.text()
        time.sleep(0.05)
    assert receiver.stop() == 0, receiver.text()
    log = receiver.text()
    assert "stopping: no new events are accepted" in log and "interrupted" in log
    (run,) = receiver.runs.iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["phase"] == "Failed" and record["message"] == "interrupted"
    assert f"stopped run {run.name} of {name}" in log
    assert not processes_mentioning(str(run)), "a step process outlived the receiver"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


# --- the same parameters as the Sensor (no servers) ----------------------------------------------------

SETTINGS = Settings(gitops_repo="/nowhere.git", environments={
    "staging": {"aliases": ["staging"]}, "production": {"aliases": ["production", "champion"]}})
BUNDLE = Bundle(settings=SETTINGS)


def headers_of(values: dict) -> Message:
    message = Message()
    for key, value in values.items():
        message[key] = value
    return message


def argo_data_key(event: dict, path: str):
    """What Argo Events reads at a trigger parameter's dataKey (gjson) from the webhook event."""
    value = event
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.mark.parametrize("action", ["created", "deleted"])
def test_the_receiver_submits_what_the_sensor_would(tmp_path, action):
    secret = "whsec-test"
    event = alias_event("fraud", "champion", "4" if action == "created" else None, action=action)
    body, raw = signed_request(event, secret=secret)
    receiver = Receiver(LocalArgo(BUNDLE, tmp_path / "runs", {}), secret)
    reply = receiver.receive(headers_of(raw), body)
    assert reply.status == 202 and reply.body["env"] == "production"
    (delivery,) = receiver.queue.drain()

    # The Sensor's trigger for `production`: fixed values in its Workflow, the rest read from the event.
    (trigger,) = [t for t in sensor(BUNDLE)["spec"]["triggers"] if t["template"]["name"] == "promote-production"]
    workflow = trigger["template"]["argoWorkflow"]["source"]["resource"]
    names = [p["name"] for p in workflow["spec"]["arguments"]["parameters"]]
    expected = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    argo_event = {"header": {k.title(): [v] for k, v in raw.items()}, "body": event}
    # The EventSource's CloudEvents context: `time` is when it received the request (RFC 3339).
    received = delivery.parameters["received_at"]
    assert abs(datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp() - time.time()) < 60
    context = {"time": received}
    for parameter in trigger["template"]["argoWorkflow"]["parameters"]:
        index = int(parameter["dest"].rsplit(".", 2)[1])
        src = parameter["src"]
        value = argo_data_key(context, src["contextKey"]) if "contextKey" in src else argo_data_key(argo_event, src["dataKey"])
        expected[names[index]] = value if isinstance(value, str) else json.dumps(value)
    assert delivery.parameters.keys() == expected.keys() and "version" not in expected
    assert expected["trigger"] == "webhook" and expected["env"] == "production"
    assert {k: v for k, v in delivery.parameters.items() if k != "body"} == \
           {k: v for k, v in expected.items() if k != "body"}
    # Argo Events re-encodes the body; the receiver hands on the signed bytes themselves.
    assert delivery.parameters["body"] == body.decode() and json.loads(expected["body"]) == event
    assert trigger_parameters(BUNDLE, "production", headers_of(raw).items(), body.decode(), event,
                              received) == delivery.parameters


def test_a_queued_promotion_is_replaced_by_a_newer_event_for_the_same_model_and_environment(tmp_path):
    secret = "whsec-test"
    receiver = Receiver(LocalArgo(BUNDLE, tmp_path / "runs", {}), secret)
    replies = [receiver.receive(headers_of(h), b) for b, h in (
        signed_request(alias_event("fraud", "production", "1"), secret=secret),
        signed_request(alias_event("churn", "staging", "7"), secret=secret),
        signed_request(alias_event("fraud", "champion", "2"), secret=secret),
    )]
    assert [r.status for r in replies] == [202, 202, 202]
    assert replies[2].body["replaces"] == replies[0].body["delivery_id"]
    assert [(d.model, d.alias) for d in receiver.queue.drain()] == [("fraud", "champion"), ("churn", "staging")]


def test_a_replay_after_a_restart_of_the_receiver_starts_nothing(tmp_path):
    from mlferry.receiver import SEEN_FILE

    secret, seen = "whsec-test", tmp_path / "runs" / SEEN_FILE
    seen.parent.mkdir()
    body, raw = signed_request(alias_event("fraud", "production", "1"), secret=secret)
    first = Receiver(LocalArgo(BUNDLE, tmp_path / "runs", {}), secret, seen_file=seen)
    assert first.receive(headers_of(raw), body).status == 202
    # A new receiver process, the same runs folder: the captured delivery is a duplicate.
    again = Receiver(LocalArgo(BUNDLE, tmp_path / "runs", {}), secret, seen_file=seen)
    reply = again.receive(headers_of(raw), body)
    assert (reply.status, reply.body["status"]) == (200, "duplicate") and len(again.queue) == 0
    # An unreadable file is not a reason to refuse work: the receiver starts without it, and says so.
    seen.write_text("{not json")
    assert Receiver(LocalArgo(BUNDLE, tmp_path / "runs", {}), secret, seen_file=seen).receive(
        headers_of(raw), body).status == 202


def test_a_delivery_id_is_remembered_while_its_signature_is_fresh():
    from mlferry.receiver import SeenDeliveries

    seen, sent = SeenDeliveries(window=300), 1_000_000
    assert seen.first_time("d1", sent, now=sent)
    assert not seen.first_time("d1", sent, now=sent + 300)  # a replay still passes the signature check
    assert seen.first_time("d1", sent, now=sent + 302)  # by now a replay fails it: the id may be forgotten
    assert seen.first_time("d2", sent, now=sent + 302)


def raw_request(port: int, head: bytes, timeout: float = 15) -> tuple[int, float]:
    """(status, seconds) of one request written as raw bytes: what a misbehaving client sends."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head)
        answer = conn.recv(65536)
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


def test_slow_clients_hold_no_threads_and_are_answered_within_the_deadline(receiver):
    from mlferry.receiver_http import REQUEST_DEADLINE

    head = (b"POST /mlflow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    slow = [socket.create_connection(("127.0.0.1", receiver.port), timeout=30) for _ in range(150)]
    try:
        for conn in slow:
            conn.sendall(head)  # the headers, one byte of a 100-byte body, then nothing
        started = time.monotonic()
        assert receiver.health()["status"] == "ok"  # others are still answered, at once
        assert time.monotonic() - started < 3
        threads = int(next(line.split()[1] for line in Path(f"/proc/{receiver.proc.pid}/status").read_text()
                           .splitlines() if line.startswith("Threads:")))
        assert threads < 40, threads  # a coroutine per slow client, not a thread
        answers = []
        for conn in slow:
            conn.settimeout(REQUEST_DEADLINE + 10)
            answers.append(conn.recv(200).split(b" ", 2)[1])
        assert set(answers) == {b"408"}
        assert time.monotonic() - started < REQUEST_DEADLINE + 8
    finally:
        for conn in slow:
            conn.close()


@pytest.mark.parametrize("lengths", [[b"1_0"], [b"10", b"11"], [b"-1"], [b"0x10"]])
def test_a_malformed_or_doubled_content_length_is_refused(receiver, lengths):
    head = b"POST /mlflow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"".join(b"Content-Length: " + value + b"\r\n" for value in lengths) + b"\r\n" + b"{}" + b" " * 9
    status, took = raw_request(receiver.port, head)
    assert status == 400 and took < 5
    assert receiver.health()["finished"] == 0

"""Faults, one at a time: a store that drops mid-upload, a registry answering 5xx, a git
remote that disappears and comes back. Real sockets and processes; nothing is mocked."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlferry.steps import gitops
from mlferry.steps.artifacts import open_source
from mlferry.steps.layout import MANIFEST_NAME
from mlferry.steps.outcome import TRANSIENT_EXIT, TransientError
from mlferry.steps.publish import publish_version
from mlferry.steps.store import ObjectStore, s3_client

ROOT = Path(__file__).resolve().parent.parent


class CuttableProxy:
    """A TCP proxy on loopback that can drop every connection after N bytes, and come back."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.budget: int | None = None  # bytes client→server before the cut; None: no cut
        self.sent = 0
        self.cut = threading.Event()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upload: bool):
        try:
            while chunk := src.recv(65536):
                if upload and self.budget is not None:
                    self.sent += len(chunk)
                    if self.sent > self.budget:
                        self.drop()
                        return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def drop(self):
        self.cut.set()
        for s in self.connections:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self):
        self.budget, self.sent = None, 0
        self.connections = []
        self.cut.clear()


def test_the_store_dropping_mid_upload_leaves_no_manifest_and_the_rerun_completes(stack, s3, tmp_path, unique_name):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    with open(model / "weights.bin", "wb") as out:
        for _ in range(40):
            out.write(os.urandom(1 << 20))
    endpoint_port = int(os.environ["MLFLOW_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = CuttableProxy(endpoint_port)
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    client = s3_client(env)
    client.meta.config.retries = {"max_attempts": 1}
    store = ObjectStore(client, "mlferry", env["MLFLOW_S3_ENDPOINT_URL"])
    slug = "faults-" + unique_name[-8:]

    proxy.budget = 20 << 20  # cut the network half-way through the large file
    with pytest.raises(TransientError):  # Argo retries the step
        publish_version(open_source(str(model)), store, "faults", "1", slug)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlferry", Prefix=f"models/{slug}/1/").get("Contents", [])]
    assert f"models/{slug}/1/{MANIFEST_NAME}" not in keys  # a partial copy is never marked complete

    proxy.restore()
    done = publish_version(open_source(str(model)), ObjectStore(s3_client(env), "mlferry", ""), "faults", "1", slug)
    assert done.files == 2
    manifest = json.loads(s3.get_object(Bucket="mlferry", Key=f"models/{slug}/1/{MANIFEST_NAME}")["Body"].read())
    assert {f["path"]: f["size"] for f in manifest["files"]} == {"MLmodel": 12, "weights.bin": 40 << 20}


class Always503(http.server.BaseHTTPRequestHandler):
    requests = 0

    def _answer(self):
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "overloaded"}')

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def test_a_registry_answering_5xx_fails_the_step_as_transient_within_bounds(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Always503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = tmp_path / "args.json"
    args.write_text(json.dumps([{"name": "model", "value": "wine"}, {"name": "version", "value": "1"},
                                {"name": "alias", "value": ""}, {"name": "stage", "value": ""},
                                {"name": "env", "value": "production"},
                                # the template's other inputs, at their defaults, as Argo passes them
                                *({"name": k, "value": v} for k, v in (("event", ""), ("hold", ""), ("release", "false"), ("item", "{}"),
                                                                       ("force", "false"), ("trigger", "manual")))]))
    # The retry settings the WorkflowTemplate gives every step (workflows/tasks.py).
    from mlferry.workflows.bundle import Bundle
    from mlferry.workflows.tasks import step_env

    template_env = {e.name: e.value for e in step_env(Bundle(), "resolve") if getattr(e, "value", None)}
    env = {**os.environ, **template_env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.server_port}",
           "hera__outputs_directory": str(tmp_path / "out"), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "mlferry.steps.resolve:resolve", str(args)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    took = time.monotonic() - started
    server.shutdown()
    assert done.returncode == TRANSIENT_EXIT, done.stderr[-2000:]
    assert took < 60 and 1 < Always503.requests <= 10  # retried, but boundedly
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["level"] == "error" and last["transient"] is True


def test_a_git_remote_that_goes_down_and_comes_back_is_retried_then_lands(tmp_path):
    from http.server import ThreadingHTTPServer

    from tests.test_commit import OUTSIDE, TOKEN, GitOverHttp, make_remote

    make_remote(tmp_path, OUTSIDE)
    handler = type("Handler", (GitOverHttp,), {"root": tmp_path, "token": TOKEN, "seen_auth": []})
    port = socket.create_server(("127.0.0.1", 0)).getsockname()[1]  # closed again: nothing listens
    url = f"http://127.0.0.1:{port}/remote.git"
    servers: list[ThreadingHTTPServer] = []
    sleeps: list[float] = []

    def back_after_two_tries(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 2:
            servers.append(ThreadingHTTPServer(("127.0.0.1", port), handler))
            threading.Thread(target=servers[-1].serve_forever, daemon=True).start()

    change = gitops.FolderChange.single("teams/ml/m/production", {"kustomization.yaml": "resources: []\n"},
                                        "promote m v1 to production\n")
    environ = {**os.environ, "MLFERRY_GIT_TOKEN": TOKEN}
    try:
        published = gitops.publish_folder(url, "main", change, environ=environ, sleep=back_after_two_tries)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert published.changed and len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # backing off

    with pytest.raises(gitops.GitOpsError, match="gave up after 5 attempts") as gone:
        gitops.publish_folder(url, "main", change, environ=environ, sleep=lambda _d: None)
    assert isinstance(gone.value, gitops.GitOpsUnavailable)  # and Argo retries the step later


def test_a_full_work_disk_is_one_clear_error(registered_model, s3, tmp_path, monkeypatch):
    """The step stages each artifact on its work disk: a 1 MiB tmpfs stands in for a full one."""
    import tempfile

    from mlferry.steps.registry import client, download_uri

    name, version = registered_model(extra_files={"weights.bin": os.urandom(3 << 20)})
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True)
    assert mounted.returncode == 0, f"this test mounts a 1 MiB tmpfs and needs root: {mounted.stderr!r}"
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tiny))
        from mlferry.steps.artifacts import SourceError

        # Files are staged concurrently: weights.bin fills the disk, and whichever file asks for
        # space next (weights.bin or a small one beside it) is the one the error names.
        with pytest.raises(SourceError, match=r"the work disk is full: no space left in .* to stage '[^']+'; "
                                              r"give the step more disk"):
            publish_version(open_source(download_uri(client(), name, version)),
                            ObjectStore.from_env("mlferry"), name, version, "disk-full-" + name[-8:])
    finally:
        monkeypatch.undo()
        subprocess.run(["umount", str(tiny)], check=True)
    prefix = f"models/disk-full-{name[-8:]}/{version}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlferry", Prefix=prefix).get("Contents", [])]
    assert prefix + MANIFEST_NAME not in keys  # nothing marked complete

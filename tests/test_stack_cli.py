"""`mlferry stack …` as a user runs it: a separate stack folder, real processes."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MLFERRY = [sys.executable, "-m", "mlferry.cli"]


def mlferry(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*MLFERRY, *args], capture_output=True, text=True, timeout=180, check=check,
                          cwd=Path(__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of(directory: Path) -> set[int]:
    import json

    state = json.loads((directory / "stack.json").read_text())
    return {part["pid"] for part in state["parts"].values()}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_is_idempotent_and_down_stops_exactly_what_up_started(tmp_path):
    d = tmp_path / "stack"
    ports = ["--mlflow-port", str(free_port()), "--s3-port", str(free_port())]
    first = mlferry("stack", "up", "--dir", str(d), *ports)
    assert "started" in first.stdout
    pids = pids_of(d)
    try:
        # again, now with the local applier: only the applier starts
        again = mlferry("stack", "up", "--dir", str(d), *ports, "--applier")
        assert again.stdout.count("already running") == 2 and "applier started" in again.stdout
        assert pids_of(d) > pids and len(pids_of(d)) == 3
        pids = pids_of(d)
        status = mlferry("stack", "status", "--dir", str(d))
        assert "mlflow   running   http://127.0.0.1:" in status.stdout
        assert "gitops   ready" in status.stdout
        assert f"applier  running   {d / 'applier' / 'status.json'}" in status.stdout

        env = dict(line.removeprefix("export ").split("=", 1)
                   for line in mlferry("stack", "env", "--dir", str(d)).stdout.splitlines())
        assert set(env) >= {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                            "AWS_SECRET_ACCESS_KEY", "MLFERRY_GITOPS_REPO", "MLFERRY_GITOPS_BRANCH",
                            "MLFERRY_BUCKET", "MLFERRY_TEAM", "MLFERRY_WEBHOOK_SECRET", "MLFERRY_APPLIER_STATUS"}
        assert Path(env["MLFERRY_APPLIER_STATUS"]).exists()  # the applier's status, where local runs read it
        assert stat.S_IMODE(os.stat(d / "secrets.env").st_mode) == 0o600
        head = subprocess.run(["git", "--git-dir", str(d / "gitops.git"), "log", "--oneline"],
                              capture_output=True, text=True, check=True).stdout
        assert "Initial commit" in head
    finally:
        mlferry("stack", "down", "--dir", str(d))
    assert not any(alive(pid) for pid in pids)
    assert "stopped" in mlferry("stack", "status", "--dir", str(d), check=False).stdout
    assert not (d / "applier" / "status.json").exists()  # the applier withdrew it as it stopped


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mlferry("stack", "up", "--dir", str(tmp_path / "s"), "--s3-port", str(port),
                         "--mlflow-port", str(free_port()), check=False)
    assert result.returncode == 1
    assert f"mlferry: error: cannot start s3: port {port} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_that_dies_while_starting_shows_its_log(tmp_path, monkeypatch):
    from mlferry.stack import Stack, StackError

    d = tmp_path / "s"
    d.mkdir()
    (d / "mlflow.db").write_text("this is not a sqlite database")
    stack = Stack(d, ports={"s3": 0, "mlflow": 0})
    monkeypatch.setattr(Stack, "_check_restorable", lambda *a: None)
    try:
        with pytest.raises(StackError, match=r"mlflow exited with code \d+ while starting; last lines of"):
            stack.up(log=lambda _m: None)
    finally:
        stack.down(log=lambda _m: None)


def test_env_before_up_says_what_to_do(tmp_path):
    result = mlferry("stack", "env", "--dir", str(tmp_path / "none"), check=False)
    assert result.returncode == 1 and "run `mlferry stack up`" in result.stderr


# -- the stack keeps its data, checks credentials, keeps its files private -----------------------
# As a user types it: `mlferry stack …` in a project folder, the stack in its default ./.mlferry.
# Each first `up` gets free ports, so that no test takes the default ones from a stack already
# running on this machine; later `up`s reuse them as a user's would.

def fresh_shell() -> dict[str, str]:
    """A user's shell with nothing exported: none of the test session's MLflow, AWS or mlferry state."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "MLFERRY_"))}


def user(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = fresh_shell()
    result = subprocess.run([*MLFERRY, *args], capture_output=True, text=True, timeout=240, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"mlferry {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def first_up(cwd: Path) -> subprocess.CompletedProcess:
    return user(cwd, "stack", "up", "--mlflow-port", str(free_port()), "--s3-port", str(free_port()))


def stack_env(cwd: Path) -> dict[str, str]:
    lines = user(cwd, "stack", "env").stdout.splitlines()
    import shlex

    return {k: shlex.split(v)[0] for k, v in (line.removeprefix("export ").split("=", 1) for line in lines)}


def python(cwd: Path, code: str) -> str:
    """Run code as a user's script would, with the stack's environment exported; its last line."""
    env = {**fresh_shell(), **stack_env(cwd)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                            cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return (result.stdout.splitlines() or [""])[-1]  # MLflow prints a line per run before it


@pytest.fixture
def project(tmp_path):
    """A project folder; whatever stack a test leaves in it is stopped and deleted."""
    yield tmp_path
    if (tmp_path / ".mlferry" / "stack.json").exists():
        user(tmp_path, "stack", "down", "--purge", check=False)


WRITE = """
import hashlib, json, os, boto3, mlflow
from mlflow import MlflowClient
from mlferry import webhooks
with mlflow.start_run() as run:
    mlflow.log_text("weights v1", "model/weights.txt")  # through MLflow's artifact proxy into s3://mlflow-artifacts
client = MlflowClient()
client.create_registered_model("kept-model")
client.create_model_version("kept-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
webhooks.register("http://127.0.0.1:9/mlflow", secret="s3cret", name="kept-hook")
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
bucket = os.environ["MLFERRY_BUCKET"]
big = os.urandom(9 * 1024 * 1024)  # above boto3's multipart threshold: uploaded in parts
open("big.bin", "wb").write(big)
s3.upload_file("big.bin", bucket, "models/big.bin", ExtraArgs={"ChecksumAlgorithm": "CRC32"})
s3.put_object(Bucket=bucket, Key="models/manifest.json", Body=b"{}", ContentType="application/json",
              Metadata={"sha256": hashlib.sha256(b"{}").hexdigest()})
print(json.dumps({k: s3.head_object(Bucket=bucket, Key=k, ChecksumMode="ENABLED")["ETag"]
                  for k in ("models/big.bin", "models/manifest.json")}))
"""

READ = """
import hashlib, json, os, boto3, mlflow
from mlferry import webhooks
path = mlflow.artifacts.download_artifacts("models:/kept-model/1")
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
bucket = os.environ["MLFERRY_BUCKET"]
big = s3.get_object(Bucket=bucket, Key="models/big.bin")
small = s3.head_object(Bucket=bucket, Key="models/manifest.json")
print(json.dumps({
    "weights": open(os.path.join(path, "weights.txt")).read(),
    "big_sha256": hashlib.sha256(big["Body"].read()).hexdigest(),
    "etags": {"models/big.bin": big["ETag"], "models/manifest.json": small["ETag"]},
    "small": [small["ContentType"], small["Metadata"]],
    "hooks": [h.name for h in webhooks.find("kept-hook")],
}))
"""


def test_down_then_up_keeps_registry_objects_commits_webhook_and_key(project):
    import hashlib
    import json

    first_up(project)
    before = stack_env(project)
    etags = json.loads(python(project, WRITE))
    big_sha256 = hashlib.sha256((project / "big.bin").read_bytes()).hexdigest()
    work = project / "work"
    repo = before["MLFERRY_GITOPS_REPO"]
    subprocess.run(["git", "clone", "-q", repo, str(work)], check=True)
    (work / "kept.txt").write_text("kept\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "kept.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a commit to keep"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "main"], check=True)

    down = user(project, "stack", "down")
    assert "s3      saved " in down.stdout, down.stdout
    up = user(project, "stack", "up")
    assert "kept    registry 1 model, s3 " in up.stdout and ", gitops 2 commits" in up.stdout, up.stdout

    after = stack_env(project)
    assert (after["AWS_ACCESS_KEY_ID"], after["AWS_SECRET_ACCESS_KEY"]) == \
        (before["AWS_ACCESS_KEY_ID"], before["AWS_SECRET_ACCESS_KEY"])  # exported shells keep working
    read = json.loads(python(project, READ))
    assert read["weights"] == "weights v1"
    assert read["big_sha256"] == big_sha256
    assert read["etags"] == etags  # multipart object put back in parts of the same size
    assert read["small"] == ["application/json", {"sha256": hashlib.sha256(b"{}").hexdigest()}]
    assert read["hooks"] == ["kept-hook"]
    log = subprocess.run(["git", "--git-dir", repo, "log", "--format=%s"], capture_output=True, text=True).stdout
    assert "a commit to keep" in log
    assert "data     kept      " in user(project, "stack", "status", check=False).stdout


def test_up_reuses_the_last_ports_and_moves_off_a_taken_one(project):
    import json

    first_up(project)
    ports = {n: p["port"] for n, p in json.loads((project / ".mlferry/stack.json").read_text())["parts"].items()}
    user(project, "stack", "down")
    user(project, "stack", "up")
    again = {n: p["port"] for n, p in json.loads((project / ".mlferry/stack.json").read_text())["parts"].items()}
    assert again == ports
    user(project, "stack", "down")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["s3"]))
        taken.listen()
        up = user(project, "stack", "up")
    assert f"port {ports['s3']} (used last time) taken by another process; using " in up.stdout, up.stdout
    moved = {n: p["port"] for n, p in json.loads((project / ".mlferry/stack.json").read_text())["parts"].items()}
    assert moved["mlflow"] == ports["mlflow"] and moved["s3"] != ports["s3"]


def test_the_stacks_s3_refuses_a_wrong_secret(project):
    import boto3
    from botocore.exceptions import ClientError

    first_up(project)
    env = stack_env(project)

    def client(key_id: str, secret: str):
        return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    right = client(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    right.put_object(Bucket=env["MLFERRY_BUCKET"], Key="k", Body=b"x")
    for key_id, secret, code in ((env["AWS_ACCESS_KEY_ID"], "wrong", "SignatureDoesNotMatch"),
                                 ("AKIAIOSFODNN7EXAMPLE", env["AWS_SECRET_ACCESS_KEY"], "InvalidAccessKeyId")):
        with pytest.raises(ClientError) as refused:
            client(key_id, secret).get_object(Bucket=env["MLFERRY_BUCKET"], Key="k")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert refused.value.response["Error"]["Code"] == code
    assert right.get_object(Bucket=env["MLFERRY_BUCKET"], Key="k")["Body"].read() == b"x"


def test_stack_files_are_the_owners_only(project):
    first_up(project)
    python(project, "import boto3, os; boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'])"
                    ".put_object(Bucket='mlferry', Key='k', Body=b'x')")
    user(project, "stack", "down")
    d = project / ".mlferry"
    files = [d / "mlflow.db", d / "secrets.env", d / "stack.json", *(d / "logs").glob("*.log"),
             d / "s3" / "manifest.json", *(d / "s3" / "objects").iterdir()]
    assert len(files) == 7  # with the two logs, the manifest and the one object
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o600" for f in files}
    folders = [d, d / "logs", d / "s3", d / "s3" / "objects", d / "gitops.git"]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {f.name: "0o700" for f in folders}


def test_purge_reset_and_data_that_cannot_be_restored(project):
    import json
    import signal

    first_up(project)
    python(project, "import mlflow; mlflow.MlflowClient().create_registered_model('m')\n"
                    "import boto3, os; boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL'])"
                    ".put_object(Bucket='mlferry', Key='k', Body=b'precious')")
    user(project, "stack", "down")
    d = project / ".mlferry"
    (blob,) = (d / "s3" / "objects").iterdir()
    blob.write_bytes(b"bitrot!!")
    refused = user(project, "stack", "up", check=False)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert f"cannot restore the S3 objects of {d}: {blob} (s3://mlferry/k) is corrupt" in refused.stderr
    assert "run `mlferry stack reset`" in refused.stderr
    assert (d / "mlflow.db").exists() and (d / "gitops.git").exists()  # nothing wiped behind the user's back

    reset = user(project, "stack", "reset")
    assert "deleted registry (mlflow.db), S3 objects (s3), GitOps repo (gitops.git)" in reset.stdout, reset.stdout
    assert not (d / "mlflow.db").exists() and not (d / "s3").exists()

    up = user(project, "stack", "up")
    assert "kept" not in up.stdout
    s3_pid = json.loads((d / "stack.json").read_text())["parts"]["s3"]["pid"]
    os.killpg(s3_pid, signal.SIGKILL)  # as a crash or a reboot would: nothing saved
    user(project, "stack", "down")
    refused = user(project, "stack", "up", check=False)
    assert refused.returncode == 1 and "stopped without `mlferry stack down` saving its objects" in refused.stderr
    assert "`mlferry stack up --restore-last-save`" in refused.stderr
    assert "started" in user(project, "stack", "up", "--restore-last-save").stdout

    purged = user(project, "stack", "down", "--purge")  # nothing saved since the reset: no s3/ to delete
    assert "deleted registry (mlflow.db), GitOps repo (gitops.git)" in purged.stdout, purged.stdout
    assert "saved" not in purged.stdout and not (d / "mlflow.db").exists() and not (d / "gitops.git").exists()

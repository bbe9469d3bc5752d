"""`make demo`: one model version from an MLflow alias to a GitOps commit and a prediction.

Starts the local stack (unless it already runs), trains an ElasticNet on scikit-learn's bundled
wine data, registers it, sets alias `production`, promotes it with mlferry, serves the
*published* S3 copy with `mlflow models serve` exactly as the rendered Deployment would, prints
two predictions and where to look, then stops what it started.

`python -m mlferry.demo train` does only the training step, against the registry this shell
points at (after `eval "$(mlferry stack env)"`): the README's by-hand block starts with it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from mlferry.stack import DEFAULT_DIR, Stack

MODEL = "wine-quality"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["train"]:
        return _train_only()
    if argv:
        print("usage: python -m mlferry.demo [train]", file=sys.stderr)
        return 2
    stack = Stack(Path(os.environ.get("MLFERRY_STACK_DIR", DEFAULT_DIR)).resolve())
    started = not _stack_running(stack)
    _say("1/5 local stack (MLflow, S3 server, GitOps remote)")
    os.environ.update(stack.up(log=lambda line: print("    " + line)))
    try:
        version, rows = _train_and_register()
        _say(f"3/5 mlferry promote {MODEL} --alias production --env production "
             "(the mlferry-promote WorkflowTemplate, on the local executor)")
        from mlferry.cli import print_event
        from mlferry.promotion import PromotionRequest, promote

        result = promote(PromotionRequest(model=MODEL, alias="production", env="production", trigger="demo"),
                         runs_root=stack.dir / "runs", on_event=print_event)
        print(result.summary())
        _say(f"4/5 serving the published copy {result.uri}")
        predictions = _serve_and_predict(result.uri, rows, stack.dir / "logs" / "model-server.log")
        _say("5/5 predictions from the served copy")
        for row, prediction in zip(rows["data"], predictions):
            print(f"    alcohol={row[0]:<6} color_intensity={row[9]:<6} → {prediction:.3f}")
        _where_to_look(stack, result)
    finally:
        if started:
            stack.down(log=lambda line: print("    " + line))
    return 0


def _train_only() -> int:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        print("mlferry demo: MLFLOW_TRACKING_URI is not set: run `mlferry stack up` and "
              "`eval \"$(mlferry stack env)\"` first", file=sys.stderr)
        return 1
    version, rows = _train_and_register()
    print(f"    an input to try: {json.dumps({'dataframe_split': rows})}")
    return 0


def _stack_running(stack: Stack) -> bool:
    return all(state == "running" for part, state, _ in stack.status() if part != "gitops")


def _train_and_register() -> tuple[str, dict]:
    import mlflow
    from mlflow import MlflowClient
    from sklearn.datasets import load_wine
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    _say("2/5 train an ElasticNet on scikit-learn's wine data and register it")
    X, y = load_wine(return_X_y=True, as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    mlflow.set_experiment("mlferry-demo")
    with mlflow.start_run():
        model = ElasticNet(alpha=0.05, l1_ratio=0.5, random_state=42).fit(X_train, y_train)
        rmse = mean_squared_error(y_test, model.predict(X_test)) ** 0.5
        mlflow.log_params({"alpha": 0.05, "l1_ratio": 0.5})
        mlflow.log_metric("rmse", rmse)
        info = mlflow.sklearn.log_model(model, name="model", input_example=X_train.head(2),
                                        registered_model_name=MODEL, pip_requirements=["scikit-learn"])
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL, "production", version)
    print(f"    {MODEL} v{version} (rmse {rmse:.3f}) now has alias production")
    sample = X_test.head(2)
    return version, {"columns": list(sample.columns), "data": sample.values.tolist()}


def _serve_and_predict(uri: str, rows: dict, log: Path) -> list[float]:
    with _model_server(uri, log) as url:
        body = json.dumps({"dataframe_split": rows}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["predictions"]


@contextmanager
def _model_server(uri: str, log: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    # mlflow execs `uvicorn` from PATH: make it the one beside this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/ping", proc, log)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the model server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the model server did not answer {url} within {timeout:.0f}s; see {log}")


def _where_to_look(stack: Stack, result) -> None:
    env = stack.environment()
    folder = result.folder
    print(f"""
where to look:
    MLflow UI        {env['MLFLOW_TRACKING_URI']}/#/models/{MODEL}   (tags mlferry.production.*)
    GitOps history   git --git-dir {stack.gitops_repo} log --stat
    manifests        git --git-dir {stack.gitops_repo} show HEAD:{folder}/kustomization.yaml
    published copy   {result.uri}  (mlferry-manifest.json lists sizes and sha256)
    the run          mlferry runs show {result.run.run_id} --stack-dir {stack.dir}""")


def _say(line: str) -> None:
    print(f"\n==> {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

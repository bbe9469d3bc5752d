"""`make demo`: one model version from an MLflow alias to a verified answer, and a bad one rolled back.

Starts the local stack with its local applier (unless it already runs), trains an ElasticNet on
scikit-learn's bundled wine data, registers it, sets alias `production` and promotes it with
mlferry: the commit lands in the GitOps repo, the applier (playing Argo CD and the kubelet) runs
the folder's Deployment, serving the *published* S3 copy with `mlflow models serve` as the
manifest says, and the verify step smoke-tests it with the model's own input example. Then two
predictions from that server. Second scene: a broken version (it answers NaN) gets the alias;
its verification fails, the alias goes back by itself and the version before serves again. Last,
where to look; then it stops what it started.

`python -m mlferry.demo train` does only the training step, against the registry this shell
points at (after `eval "$(mlferry stack env)"`): the README's by-hand block starts with it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
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
    _say("1/6 local stack (MLflow, S3 server, GitOps remote, local applier)")
    os.environ.update(stack.up(log=lambda line: print("    " + line), applier=True))
    # Promotions end verified: the verify step reads what the local applier runs.
    os.environ.setdefault("MLFERRY_VERIFY", "local")
    try:
        version, rows = _train_and_register()
        _say(f"3/6 mlferry promote {MODEL} --alias production --env production "
             "(the mlferry-promote WorkflowTemplate, on the local executor)")
        result = _promote(stack)
        print(result.summary())
        _say(f"4/6 predictions from the model server the applier runs (the published copy {result.uri})")
        predictions = _predict(_endpoint(result.folder, result.commit), rows)
        for row, prediction in zip(rows["data"], predictions):
            print(f"    alcohol={row[0]:<6} color_intensity={row[9]:<6} → {prediction:.3f}")
        _broken_version_rolls_back(stack, result.folder, version, rows)
        _where_to_look(stack, result)
    finally:
        if started:
            stack.down(log=lambda line: print("    " + line))
    return 0


def _promote(stack: Stack):
    from mlferry.cli import print_event
    from mlferry.promotion import PromotionRequest, promote

    return promote(PromotionRequest(model=MODEL, alias="production", env="production", trigger="demo"),
                   runs_root=stack.dir / "runs", on_event=print_event)


def _broken_version_rolls_back(stack: Stack, folder: str, good: str, rows: dict) -> None:
    """Scene two: a version that answers garbage gets the alias; verification fails and undoes it."""
    from mlflow import MlflowClient

    from mlferry.promotion import PromotionFailed

    _say("5/6 a broken version: it loads, but answers NaN; the alias moves to it")
    bad = _register_broken_version(rows)
    print(f"    {MODEL} v{bad} now has alias production")
    try:
        _promote(stack)
    except PromotionFailed as failed:
        print(f"    the promotion failed, as it should: {failed}")
    else:
        raise RuntimeError(f"v{bad} answers NaN, but its promotion was verified: the smoke test missed it")
    client = MlflowClient()
    now = client.get_model_version_by_alias(MODEL, "production").version
    tags = client.get_model_version(MODEL, bad).tags
    print(f"    alias production points at v{now} again (it was v{bad}); v{bad} is tagged "
          f"status={tags.get('mlferry.production.status')}, rollback={tags.get('mlferry.production.rollback')!r}")
    if now != good:
        raise RuntimeError(f"the alias should be back on v{good}, it is on v{now}")
    predictions = _predict(_endpoint(folder, _head(stack)), rows)
    print(f"    v{good} serves again: {', '.join(f'{p:.3f}' for p in predictions)}")


def _register_broken_version(rows: dict) -> str:
    import math

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    class AnswersNaN(mlflow.pyfunc.PythonModel):
        """A model that loads fine and answers garbage: what a bad feature pipeline looks like."""

        def predict(self, context, model_input, params=None):
            return [math.nan] * len(model_input)

    example = pd.DataFrame(rows["data"], columns=rows["columns"])
    mlflow.set_experiment("mlferry-demo")
    # MLflow's advice on type hints and pickling is for real models; this one is broken on purpose.
    with warnings.catch_warnings(), mlflow.start_run(), _quiet("mlflow.pyfunc"):
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(name="model", python_model=AnswersNaN(), input_example=example,
                                       registered_model_name=MODEL, pip_requirements=["pandas"])
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL, "production", version)
    return version


@contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level, log.level = log.level, logging.ERROR
    try:
        yield
    finally:
        log.setLevel(level)


def _head(stack: Stack) -> str:
    from mlferry.steps.gitops import Git

    return Git(stack.gitops_repo, os.environ).run("rev-parse", "HEAD", action="read the head").strip()


def _endpoint(folder: str, commit: str) -> str:
    """The model server the local applier runs for `folder` once it has applied `commit` (until then
    the server of the version before may still answer, healthy), waited for as the verify step waits."""
    from mlferry.steps.local_status import local_source
    from mlferry.steps.settings import load_settings
    from mlferry.steps.verify import wait_until_running

    source = local_source(load_settings())
    return wait_until_running(source, folder, commit, 120, contains=lambda *_: False).endpoint


def _predict(url: str, rows: dict) -> list[float]:
    from mlferry.steps.verify import invoke

    return invoke(url, {"dataframe_split": rows}, timeout=60)["predictions"]


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

    _say("2/6 train an ElasticNet on scikit-learn's wine data and register it")
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


def _where_to_look(stack: Stack, result) -> None:
    env = stack.environment()
    folder = result.folder
    print(f"""
==> 6/6 where to look
    MLflow UI        {env['MLFLOW_TRACKING_URI']}/#/models/{MODEL}   (tags mlferry.production.*)
    GitOps history   git --git-dir {stack.gitops_repo} log --stat
    manifests        git --git-dir {stack.gitops_repo} show HEAD:{folder}/kustomization.yaml
    published copy   {result.uri}  (mlferry-manifest.json lists sizes and sha256)
    the run          mlferry runs show {result.run.run_id} --stack-dir {stack.dir}
    what runs        mlferry status   (DEPLOYED and HEALTH, from the local applier)
    model servers    {stack.applier_status.parent}/  (status.json and each server's log)""")


def _say(line: str) -> None:
    print(f"\n==> {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

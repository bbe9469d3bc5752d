"""Small real models for the tests, logged and registered on the session's MLflow server."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient


def register_model(
    name: str,
    *,
    alias: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    git_commit: str | None = None,
    input_example: bool = True,
) -> tuple[str, str]:
    """Train a tiny linear model, log it with its signature, register it as `name`.

    extra_files are written under the model folder (paths may contain subfolders), for
    tests that need nested or large artifacts.
    """
    import numpy as np
    from sklearn.linear_model import ElasticNet

    X = np.arange(20, dtype=float).reshape(10, 2)
    y = X @ np.array([0.5, -0.25]) + 1.0
    model = ElasticNet(alpha=0.01).fit(X, y)
    # Not mlflow.set_experiment: it exports MLFLOW_EXPERIMENT_ID into this process's environment, and
    # every later subprocess (a fresh stack's user shell included) would inherit an id it lacks.
    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"tests-{name}"[:200])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(f"tests-{name}"[:200])
    run_tags = {"mlflow.source.git.commit": git_commit} if git_commit else None
    with mlflow.start_run(experiment_id=experiment_id, tags=run_tags):
        mlflow.log_metric("rmse", 0.125)
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X[:2] if input_example else None, registered_model_name=name,
            pip_requirements=["scikit-learn"],  # skips slow requirement inference
        )
        if extra_files:
            _log_extra_files(info.artifact_path, extra_files)
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    if description is not None:
        client.update_model_version(name, version, description=description)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return name, version


def _log_extra_files(model_artifact_uri: str, files: dict[str, bytes]) -> None:
    """Put extra files into the logged model's own artifact folder."""
    import tempfile

    from mlflow.artifacts import get_artifact_repository  # type: ignore[attr-defined]

    repo = get_artifact_repository(model_artifact_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for rel, data in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        repo.log_artifacts(tmp)


def register_pyfunc(name: str, python_model, *, alias: str | None = None) -> str:
    """Register a `mlflow.pyfunc.PythonModel` (pickled by value) with the tiny model's input example."""
    import sys
    import warnings

    import cloudpickle
    import numpy as np

    # By value: the model server runs elsewhere, where the test module is not importable.
    cloudpickle.register_pickle_by_value(sys.modules[type(python_model).__module__])
    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"tests-{name}"[:200])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(f"tests-{name}"[:200])
    with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment_id):
        warnings.simplefilter("ignore")  # MLflow's advice on type hints: these models are broken on purpose
        info = mlflow.pyfunc.log_model(name="model", python_model=python_model, registered_model_name=name,
                                       input_example=np.arange(4, dtype=float).reshape(2, 2),
                                       pip_requirements=["numpy"])
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version

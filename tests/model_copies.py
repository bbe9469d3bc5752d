"""Many registered models for the load tests, from one small trained model.

Training and logging a model takes a second or more; a test that needs thirty models logs one
(tests.models.register_model) and registers each further name as a new model version whose source
is that same logged model, as `mlflow.register_model(<logged model uri>, name)` does for a user.
Each name then has its own registry entry and version, so its promotion resolves, publishes,
renders and commits on its own; only the artifact bytes they are copied from are shared.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from mlflow import MlflowClient

from tests.models import register_model


def register_copies(names: list[str], *, threads: int = 8) -> list[tuple[str, str]]:
    """Register every name in `names` (the first one trained and logged); returns (name, version) each."""
    first, version = register_model(names[0])
    client = MlflowClient()
    logged = client.get_model_version(first, version)

    def register(name: str) -> tuple[str, str]:
        client.create_registered_model(name)
        return name, _new_version(client, name, logged)

    with ThreadPoolExecutor(threads) as pool:
        return [(first, version), *pool.map(register, names[1:])]


def add_version(name: str, *, like: str) -> str:
    """A further version of `name`, from the same logged model as `like`'s version 1."""
    client = MlflowClient()
    return _new_version(client, name, client.get_model_version(like, "1"))


def _new_version(client: MlflowClient, name: str, logged) -> str:
    # A logged model's source is `models:/<model id>`; the server wants that id said again.
    model_id = logged.model_id or (logged.source.split("/", 1)[1] if logged.source.startswith("models:/") else None)
    return str(client.create_model_version(name, logged.source, run_id=logged.run_id, model_id=model_id).version)

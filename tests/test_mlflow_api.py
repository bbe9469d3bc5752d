"""The steps' MLflow REST client against a real MLflow server behind a real authenticating proxy.

MLflow's own auth (the basic-auth app, or a token checked by an ingress) sits in front of the
same REST API; the proxy here plays that part over real HTTP and forwards to the session's
server, so every registry call and every artifact download must carry the credentials.
"""

import base64
import os
import urllib.error
import urllib.request

import pytest

from mlferry.steps import registry
from mlferry.steps.mlflow_api import MlflowApi, MlflowApiError
from mlferry.steps.resolve import ResolveInput, resolve
from tests.loopback import LoopbackServer, QuietHandler

TOKEN = "mlf-tok-5b1e0c9d7a"
USER, PASSWORD = "ferry", "pw-2c81f4d6"


class AuthProxy(QuietHandler):
    upstream = ""
    accepted: set[str] = set()
    seen: list[str] = []

    def do_GET(self):
        self._relay()

    def do_POST(self):
        self._relay()

    def _relay(self):
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        if auth not in self.accepted:
            return self.reply(401, b'{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}', None)
        request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                         headers={"Content-Type": self.headers.get("Content-Type", "")})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                self.reply(response.status, response.read(), None)
        except urllib.error.HTTPError as err:
            self.reply(err.code, err.read(), None)


@pytest.fixture
def auth_proxy(stack, monkeypatch):
    handler = type("Proxy", (AuthProxy,), {
        "upstream": os.environ["MLFLOW_TRACKING_URI"].rstrip("/"), "seen": [],
        "accepted": {f"Bearer {TOKEN}", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
    })
    with LoopbackServer(handler) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        for key in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(key, raising=False)
        yield handler


@pytest.fixture
def aliased_model(registered_model):
    # Registered before the proxy takes over MLFLOW_TRACKING_URI: training talks to the server itself.
    return registered_model(alias="production")


def test_a_token_goes_with_every_registry_call_and_artifact_download(aliased_model, auth_proxy, monkeypatch):
    name, version = aliased_model
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    got = resolve(ResolveInput(model=name, alias="production", env="production"))
    assert got.version == version and "sklearn" in got.flavors  # flavors come from the proxied MLmodel
    assert auth_proxy.seen and set(auth_proxy.seen) == {f"Bearer {TOKEN}"}


def test_user_and_password_work_as_basic_auth(aliased_model, auth_proxy, monkeypatch):
    name, version = aliased_model
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert resolve(ResolveInput(model=name, alias="production", env="production")).version == version
    registry.set_version_tags(registry.client(), name, version, {"checked": "yes"})


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_missing_or_wrong_credentials_are_one_clear_error(aliased_model, auth_proxy, monkeypatch, caplog, token):
    name, _ = aliased_model
    if token:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    with pytest.raises(MlflowApiError) as raised:
        resolve(ResolveInput(model=name, alias="production", env="production"))
    message = str(raised.value)
    assert message.startswith("MLflow answered 401: You are not authenticated.")
    assert "check the credentials in MLFLOW_TRACKING_TOKEN" in message and "\n" not in message
    assert not (token and (token in message or token in caplog.text))
    assert len(auth_proxy.seen) == 1  # a 401 is not retried: it will not get better


def test_a_tracking_uri_that_is_not_a_server_is_refused_before_any_request(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ValueError, match="must be the http.s. address of the MLflow server, got 'file:///tmp/mlruns'"):
        MlflowApi.from_env()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI is not set"):
        MlflowApi.from_env()


def test_errors_from_the_server_keep_mlflows_code_and_message(stack, unique_name):
    api = MlflowApi.from_env()
    with pytest.raises(MlflowApiError) as raised:
        api.get("registered-models/get", name=unique_name)
    assert raised.value.status == 404 and raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert unique_name in str(raised.value)

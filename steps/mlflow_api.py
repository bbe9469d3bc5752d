"""MLflow's REST API, spoken directly: the handful of registry and artifact calls the steps make.

Why not `MlflowClient`: importing mlflow in every step process was most of a promotion's latency
(bench/latency.py has the figures), for a few GET requests. These are the
stable REST 2.0 endpoints MlflowClient itself calls (mlflow/protos/model_registry.proto,
service.proto, mlflow_artifacts.proto), with the same configuration: MLFLOW_TRACKING_URI, a
token or user and password, TLS settings, and MLFLOW_HTTP_REQUEST_* for timeouts and retries.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mlferry.steps.outcome import TransientError

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
RETRY_STATUSES = (429, 500, 502, 503, 504)
# The bounded defaults steps also get from their WorkflowTemplate: a short client-side retry,
# then the template's retryStrategy (exit 75, with backoff) does the patient retrying.
DEFAULT_RETRIES, DEFAULT_BACKOFF, DEFAULT_TIMEOUT = 2, 1.0, 60.0
AUTH_HINT = ("; check the credentials in MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME and "
             "MLFLOW_TRACKING_PASSWORD (the mlferry-mlflow Secret on a cluster)")


class MlflowApiError(RuntimeError):
    """The server answered with an error; `error_code` is MLflow's (RESOURCE_DOES_NOT_EXIST...)."""

    def __init__(self, message: str, status: int, error_code: str = ""):
        super().__init__(message)
        self.message, self.status, self.error_code = message, status, error_code


class TransientMlflowApiError(MlflowApiError, TransientError):
    """A 5xx or 429 that outlasted the client's retries: worth running the step again."""


class MlflowUnreachable(TransientError):
    """No answer at all: connection refused, DNS, TLS or a timeout."""


class MlflowApi:
    def __init__(self, tracking_uri: str, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        if urlsplit(tracking_uri).scheme not in ("http", "https"):
            raise ValueError(f"MLFLOW_TRACKING_URI must be the http(s) address of the MLflow server, "
                             f"got {shown(tracking_uri)!r}; mlferry talks to the registry over its REST API")
        self.tracking_uri = tracking_uri.rstrip("/")
        self.timeout = float(env.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or DEFAULT_TIMEOUT)
        self.session = _session(env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MlflowApi:
        env = os.environ if environ is None else environ
        return cls(tracking_uri(env), env)

    # -- registry and tracking: JSON in, JSON out -----------------------------------------

    def get(self, endpoint: str, **params: Any) -> dict:
        return self._json("GET", f"{self.tracking_uri}{API}/{endpoint}", params=params)

    def post(self, endpoint: str, body: dict) -> dict:
        return self._json("POST", f"{self.tracking_uri}{API}/{endpoint}", json=body)

    def delete(self, endpoint: str, body: dict) -> dict:
        return self._json("DELETE", f"{self.tracking_uri}{API}/{endpoint}", json=body)

    def _json(self, method: str, url: str, **kwargs) -> dict:
        response = self._send(method, url, **kwargs)
        raise_for_error(response)
        return response.json() if response.content else {}

    # -- proxied artifacts (mlflow-artifacts:/...) ----------------------------------------

    def list_artifacts(self, root: str, path: str = "") -> list[dict]:
        """Entries of one folder: [{"path": name, "is_dir": bool, "file_size": int}]."""
        where = posixpath.join(root, path) if path else root
        response = self._send("GET", f"{self.tracking_uri}{ARTIFACTS}", params={"path": where.strip("/")})
        raise_for_error(response)
        return (response.json() if response.content else {}).get("files", [])

    def download_artifact(self, root: str, path: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes, streamed: memory stays at one chunk whatever the file's size."""
        url = f"{self.tracking_uri}{ARTIFACTS}/{quote(posixpath.join(root.strip('/'), path))}"
        with self._send("GET", url, stream=True) as response:
            raise_for_error(response)
            yield from response.iter_content(chunk_size=chunk_bytes)

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise MlflowUnreachable(f"MLflow at {shown(self.tracking_uri)} {_what_happened(err)}; check "
                                    "MLFLOW_TRACKING_URI and that the server is up") from None


def _what_happened(err: BaseException) -> str:
    """"refused the connection", "did not answer in time"…: the cause, from the exception chain."""
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return "refused the connection"
        cause = cause.__cause__ or cause.__context__ or next(
            (a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)), None)
    if isinstance(err, requests.Timeout):
        return "did not answer in time"
    if isinstance(err, requests.exceptions.SSLError):
        return "failed the TLS handshake"
    return f"could not be reached ({type(err).__name__})"


def tracking_uri(environ: Mapping[str, str]) -> str:
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError("MLFLOW_TRACKING_URI is not set; set it to your MLflow server, "
                         "e.g. http://mlflow.ml.svc:5000")
    return uri


def shown(uri: str) -> str:
    """The URI without any user:password, for messages."""
    parts = urlsplit(uri)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def raise_for_error(response: requests.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("error_code", "") if isinstance(body, dict) else ""
    message = (body.get("message") if isinstance(body, dict) else "") or response.reason or "error"
    status = response.status_code
    cls = TransientMlflowApiError if status >= 500 or status == 429 else MlflowApiError
    hint = AUTH_HINT if response.status_code in (401, 403) else ""
    raise cls(f"MLflow answered {response.status_code}: {message}{hint}", response.status_code, code)


def _session(env: Mapping[str, str]) -> requests.Session:
    session = requests.Session()
    retries = Retry(
        total=int(env.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or DEFAULT_RETRIES),
        backoff_factor=float(env.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR") or DEFAULT_BACKOFF),
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # every call made here is a read or an idempotent tag write
        raise_on_status=False,  # the last 5xx comes back as a response, with MLflow's message
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retries, pool_maxsize=16)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        session.auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    if _true(env.get("MLFLOW_TRACKING_INSECURE_TLS")):
        session.verify = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    session.headers["User-Agent"] = "mlferry"
    return session


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")

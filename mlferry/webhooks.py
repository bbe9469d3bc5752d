"""`mlferry webhook register|test`: the MLflow webhook that sends alias events to mlferry.

One webhook, found by name: `register` creates it or updates it in place (URL, events, secret, active),
so running it twice leaves one. It subscribes to the events steps/event_filter.py accepts, and signs
with MLFERRY_WEBHOOK_SECRET, the secret the receiver and the verify-event step check. `test` asks the
MLflow server to send its example event (mlflow.webhooks.delivery.test_webhook) and reports the answer;
the example names alias `example_alias`, so a working receiver answers 200 "ignored".

MLflow (3.17) lists webhooks per event from a cache (MLFLOW_WEBHOOK_CACHE_TTL, 60 s by default): a
new or changed webhook gets events once that cache expires. The local stack sets it to 1 s.
"""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

from mlferry.steps.event_filter import ACTIONS, ENTITY
from mlferry.steps.verify_event import SECRET_ENV

DEFAULT_NAME = "mlferry"
EVENTS = tuple(f"{ENTITY}.{action}" for action in ACTIONS)  # model_version_alias.created / .deleted
DESCRIPTION = "mlferry: registry alias moves start promotions (managed by `mlferry webhook register`)"


class WebhookError(RuntimeError):
    """The webhook could not be registered or tested; the message says why and what to set."""


@dataclass(frozen=True)
class Registration:
    webhook_id: str
    name: str
    url: str
    events: tuple[str, ...]
    created: bool  # False: an existing webhook of that name was updated
    removed: tuple[str, ...] = ()  # ids of extra webhooks of the same name, deleted


@dataclass(frozen=True)
class WebhookAnswer:
    name: str
    url: str
    success: bool
    status: int | None
    body: str
    error: str


@dataclass(frozen=True)
class ServerSetting:
    name: str
    value: str
    why: str
    need: str  # needed | not needed for this URL | optional


def register(url: str, *, secret: str, name: str = DEFAULT_NAME, client: Any = None) -> Registration:
    """Create the webhook `name`, or update the one that exists, to post alias events to `url`."""
    _check_url(url)
    if not secret:
        raise WebhookError(f"{SECRET_ENV} is not set: the webhook must sign its events with the secret mlferry "
                           "checks (`mlferry stack env` prints the local stack's)")
    client = client or _client()
    existing = sorted(find(name, client=client), key=lambda w: (w.creation_timestamp, w.webhook_id))
    with _mlflow_errors():
        if existing:
            webhook = client.update_webhook(existing[0].webhook_id, url=url, events=list(EVENTS), secret=secret,
                                            description=DESCRIPTION, status="ACTIVE")
        else:
            webhook = client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret,
                                            description=DESCRIPTION, status="ACTIVE")
        removed = tuple(w.webhook_id for w in existing[1:])
        for webhook_id in removed:  # one webhook per name: otherwise every event would arrive twice
            client.delete_webhook(webhook_id)
    return Registration(webhook.webhook_id, webhook.name, webhook.url, tuple(str(e) for e in webhook.events),
                        created=not existing, removed=removed)


def send_test(name: str = DEFAULT_NAME, *, client: Any = None) -> WebhookAnswer:
    """Have the MLflow server send its example alias event to the webhook `name`; what came back."""
    client = client or _client()
    webhook = _one(name, client)
    with _mlflow_errors():
        result = client.test_webhook(webhook.webhook_id)
    return WebhookAnswer(name, webhook.url, bool(result.success), result.response_status,
                      result.response_body or "", result.error_message or "")


def delete(name: str = DEFAULT_NAME, *, client: Any = None) -> list[str]:
    """Delete every webhook called `name`; their ids."""
    client = client or _client()
    ids = [w.webhook_id for w in find(name, client=client)]
    for webhook_id in ids:
        client.delete_webhook(webhook_id)
    return ids


def find(name: str, *, client: Any = None) -> list[Any]:
    """Every webhook called `name` (MLflow does not keep names unique)."""
    client = client or _client()
    found, token = [], None
    with _mlflow_errors():
        while True:
            page = client.list_webhooks(max_results=100, page_token=token)
            found.extend(w for w in page if w.name == name)
            token = page.token
            if not token:
                return found


def server_settings(url: str) -> list[ServerSetting]:
    """What the MLflow server's environment needs for a webhook to `url`."""
    parts = urlsplit(url)
    needed = lambda yes: "needed" if yes else "not needed for this URL"  # noqa: E731
    return [
        ServerSetting("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", "<a Fernet key>",
                      "MLflow stores the webhook's secret encrypted with it", "needed"),
        ServerSetting("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true",
                      "the receiver is on loopback, a private network or inside the cluster",
                      needed(_is_private_host(parts.hostname or ""))),
        ServerSetting("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https",
                      "MLflow allows https only by default", needed(parts.scheme == "http")),
        ServerSetting("MLFLOW_WEBHOOK_CACHE_TTL", "1",
                      "MLflow caches its webhook list for 60 s: a new or changed webhook misses events until then",
                      "optional"),
    ]


def _is_private_host(host: str) -> bool:
    if host == "localhost" or host.endswith((".svc", ".local", ".internal", ".cluster.local")) or "." not in host:
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False  # a DNS name: MLflow resolves it and refuses private addresses unless allowed


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"--url {url!r} must be an http(s) URL with a host, e.g. http://127.0.0.1:8765/mlflow")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise WebhookError(f"--url {url!r} has an empty or invalid port; give one from 1 to 65535, "
                           "e.g. http://127.0.0.1:8765/mlflow")
    if parts.path in ("", "/"):
        raise WebhookError(f"--url {url!r} has no path; the receiver listens on its events path "
                           "(events.path in mlferry.yaml, /mlflow by default), e.g. http://127.0.0.1:8765/mlflow")


def _one(name: str, client: Any) -> Any:
    found = find(name, client=client)
    if not found:
        raise WebhookError(f"no webhook named {name!r} on the MLflow server; run `mlferry webhook register --url …`")
    return sorted(found, key=lambda w: (w.creation_timestamp, w.webhook_id))[0]


def _client() -> Any:
    from mlflow import MlflowClient  # imported here: a second of start-up that other commands do not pay

    return MlflowClient()


@contextmanager
def _mlflow_errors() -> Iterator[None]:
    """MLflow's exceptions as WebhookError, with the server setting that usually fixes them."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        message = str(getattr(err, "message", err))
        lowered = message.lower()
        hint = ""
        if "scheme" in lowered:
            hint = " (start the MLflow server with MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https)"
        elif "private" in lowered or "resolve" in lowered:
            hint = " (start the MLflow server with MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true)"
        elif "encrypt" in lowered:
            hint = " (start the MLflow server with MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY set)"
        raise WebhookError(f"MLflow refused: {message}{hint}") from None

"""The receiver's HTTP side: uvicorn serving a small ASGI app in front of `Receiver.receive`.

uvicorn (installed with MLflow) rather than Python's threading server, for the limits a server on
a network needs: connections are capped (`MAX_CONNECTIONS`; beyond it uvicorn answers 503), a slow
client costs a coroutine, not a thread, and each request must arrive whole within
`REQUEST_DEADLINE` seconds (else 408). h11, uvicorn's HTTP parser, refuses a malformed request
line or header (`Content-Length: 1_0`, two different Content-Lengths) with a 400 before the app
sees it. What the app adds: one path, POST only, a Content-Length and a body of at most
`MAX_BODY_BYTES`, then `Receiver.receive` decides (mlferry/receiver.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from email.message import Message
from http import HTTPStatus
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from mlferry.receiver import Receiver

log = logging.getLogger("mlferry.receiver")

HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1024 * 1024  # MLflow's alias events are a few hundred bytes
DRAIN_LIMIT = 8 * MAX_BODY_BYTES  # an oversized body up to this is read and dropped, so the client sees the 413
MAX_CONNECTIONS = 256  # open connections at once (a coroutine each, no thread); more are answered 503
REQUEST_DEADLINE = 10.0  # seconds a client may take to send its whole request body
KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept

@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, one-line JSON body, and what the log line says about it."""

    status: int
    body: dict[str, Any]
    note: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, message: str, note: str = "") -> "Reply":
        return cls(status, {"error": message}, note or message)


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def asgi_app(receiver: Receiver):
    """The ASGI application: one POST path for MLflow, a health path, nothing else."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        reply, level = await _answer(receiver, scope, receive)
        await _send(send, reply)
        client = (scope.get("client") or ("-",))[0]
        log.log(level, "%s %s %s %d %s", client, scope["method"], scope["path"], reply.status,
                reply.note or HTTPStatus(reply.status).phrase)

    return app


async def _answer(receiver: Receiver, scope: dict[str, Any], receive: Receive) -> tuple[Reply, int]:
    method, path = scope["method"], scope["path"]
    if method == "GET" and path == HEALTH_PATH:
        return Reply(HTTPStatus.OK, receiver.health()), logging.DEBUG
    if path != receiver.path:
        return Reply.error(HTTPStatus.NOT_FOUND, f"no such path; MLflow posts to {receiver.path}"), logging.INFO
    if method != "POST":
        return Reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST"}, "use POST",
                     headers=(("Allow", "POST"),)), logging.INFO
    headers = _headers(scope)
    problem = _length_problem(headers)
    if problem:
        if problem.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and int(headers["Content-Length"]) <= DRAIN_LIMIT:
            # Read and drop the body first: a server that answers and closes while the client is still
            # sending makes it see a broken pipe instead of the 413.
            try:
                await asyncio.wait_for(_drain(receive), REQUEST_DEADLINE)
            except asyncio.TimeoutError:
                pass
        return problem, logging.INFO
    try:
        body = await asyncio.wait_for(_body(receive, int(headers["Content-Length"])), REQUEST_DEADLINE)
    except asyncio.TimeoutError:
        return Reply.error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {REQUEST_DEADLINE:.0f} s"), \
            logging.INFO
    except _Disconnected:
        return Reply.error(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length"), logging.INFO
    try:
        return receiver.receive(headers, body), logging.INFO
    except Exception:  # a bug: say so to MLflow (it retries a 500) and in the log, keep serving
        log.exception("delivery %s: the receiver failed", headers.get("X-MLflow-Delivery-Id", "-"))
        return Reply.error(HTTPStatus.INTERNAL_SERVER_ERROR, "the receiver failed; see its log"), logging.INFO


def _headers(scope: dict[str, Any]) -> Message:
    """The request's headers, looked up without regard to case, as `Receiver.receive` takes them."""
    headers = Message()
    for name, value in scope.get("headers") or []:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return headers


def _length_problem(headers: Message) -> Reply | None:
    if headers.get("Transfer-Encoding"):
        return Reply.error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
    length = headers.get("Content-Length", "")
    if not length.isdigit():  # h11 has checked the syntax; absent is what remains
        return Reply.error(HTTPStatus.LENGTH_REQUIRED, "a valid Content-Length is required")
    if int(length) > MAX_BODY_BYTES:
        return Reply.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
    return None


class _Disconnected(Exception):
    pass


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def _body(receive: Receive, length: int) -> bytes:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            break
    body = b"".join(parts)
    if len(body) != length:
        raise _Disconnected
    return body


async def _send(send: Send, reply: Reply) -> None:
    data = json.dumps(reply.body).encode() + b"\n"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *((name.lower().encode(), value.encode()) for name, value in reply.headers)]
    await send({"type": "http.response.start", "status": int(reply.status), "headers": headers})
    await send({"type": "http.response.body", "body": data})


class HttpServer:
    """uvicorn on a socket bound here (so a busy port is our error, with our words), in a thread."""

    def __init__(self, host: str, port: int, receiver: Receiver):
        import uvicorn

        self.socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.server = uvicorn.Server(uvicorn.Config(
            asgi_app(receiver), limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE,
            lifespan="off", log_config=None, access_log=False, server_header=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="mlferry-receiver-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

"""How a step ends when it runs as an Argo task: exit codes and log lines for people.

Argo retries a task by its exit code (the WorkflowTemplate's retryStrategy retries exit code
TRANSIENT_EXIT only), so a step must say whether a failure is worth retrying: a network error or
an HTTP 5xx is; a missing model, a bad name or an invalid manifest is not, and retrying it
would only delay the error. Logs are JSON lines in pods (MLFERRY_LOG_FORMAT=json) so the Argo
UI and log stores can filter them, and plain text on a terminal.
"""

import functools
import json
import logging
import os
import re
import sys
from typing import Callable, TypeVar

TRANSIENT_EXIT = 75  # EX_TEMPFAIL
PERMANENT_EXIT = 1

F = TypeVar("F", bound=Callable)


class TransientError(RuntimeError):
    """A failure that may succeed when tried again (network, 5xx, a remote that moved)."""


def is_transient(err: BaseException) -> bool:
    if isinstance(err, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(err, _loaded_types(_NETWORK_ERRORS)) and not isinstance(err, _loaded_types(_TLS_ERRORS)):
        return True
    status = _http_status(err)
    return status is not None and (status >= 500 or status == 429)


# The client libraries' network failures, by type (subclasses included). TLS errors are excluded: a
# refused certificate does not heal by itself.
_NETWORK_ERRORS = {
    "requests.exceptions": ("ConnectionError", "Timeout", "ChunkedEncodingError"),
    "urllib3.exceptions": ("TimeoutError",),  # ConnectTimeoutError, ReadTimeoutError
    "botocore.exceptions": ("ConnectionError", "ReadTimeoutError", "ConnectionClosedError"),
}
_TLS_ERRORS = {"requests.exceptions": ("SSLError",), "botocore.exceptions": ("SSLError",)}


def _loaded_types(names: dict[str, tuple[str, ...]]) -> tuple[type, ...]:
    """The named exception classes of the modules already imported: an error can only be of a class
    whose module is loaded, and a step that never imports botocore does not pay for it here."""
    found = []
    for module_name, classes in names.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, name) for name in classes if module is not None and hasattr(module, name)]
    return tuple(found)


def _http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return getattr(response, "status_code", None)  # requests' HTTPError


def as_argo_step(fn: F) -> F:
    """Run `fn` as a task: a failure becomes one log line and an exit code Argo can act on.

    Only under Hera's runner (it sets hera__outputs_directory); called in-process, the
    exception propagates unchanged.
    """

    @functools.wraps(fn)
    def step(*args, **kwargs):
        if not os.environ.get("hera__outputs_directory"):
            return fn(*args, **kwargs)
        configure_logging()
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the boundary of the task
            transient = is_transient(err)
            logging.getLogger(f"mlferry.step.{fn.__name__}").error(
                "%s%s", err, " (transient: Argo retries it)" if transient else "",
                extra={"step": fn.__name__, "transient": transient, "error_type": type(err).__name__})
            raise SystemExit(TRANSIENT_EXIT if transient else PERMANENT_EXIT) from None

    return step  # type: ignore[return-value]


# What Argo (and the local engine, as Argo does) puts before a failed pod's own words.
_EXIT_PREFIX = re.compile(r"^Error \(exit code (\d+)\)(?::\s*)?")
_TRANSIENT_NOTE = " (transient: Argo retries it)"
_LEVELS = {"error": 3, "critical": 3, "warning": 2, "info": 1, "debug": 0}


def readable_failure(message: str) -> str:
    """One line for people from a step's message: the error a step logged (JSON log lines or text)
    without the engine's wrapping, the traceback or the log record around it.

    Never a JSON object and never `null`: a step that said nothing gets "exited with code N".
    """
    text = (message or "").strip()
    exit_code = _EXIT_PREFIX.match(text)
    if exit_code:
        text = text[exit_code.end():]
    line = _one_line(text)
    if not line and exit_code:
        line = f"exited with code {exit_code.group(1)} without saying why (see `mlferry runs logs`)"
    return line


def node_line(message: str, phase: str, attempts: int, retry: str = "") -> str:
    """A node's one line for people: its own words, after how many attempts a failed one gave up,
    and, while it waits between attempts, which retry comes next (the engine keeps each apart)."""
    line = readable_failure(message)
    if line and phase in ("Failed", "Error") and attempts > 1:
        line += f" (gave up after {attempts} attempts)"
    if line and retry:
        line += f"; {retry}"
    return line


def _one_line(text: str) -> str:
    """The most telling line of a log tail: the last error record, else the last plain line."""
    best, best_level, plain = "", -1, ""
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        record, rest = _json_record(raw)
        if record is None:
            if not _noise(raw):
                plain = raw
            continue
        msg = _record_message(record)
        level = _LEVELS.get(str(record.get("level", "")).lower(), 1)
        if msg and level >= best_level:
            best, best_level = msg + (f" {rest}" if rest else ""), level
    if best_level >= _LEVELS["warning"] or (best and not plain):
        chosen = best
    else:
        chosen = plain or best
    chosen = " ".join(chosen.replace(_TRANSIENT_NOTE, "").split())
    return "" if chosen in ("null", "None", "{}", "[]") else chosen


def _json_record(line: str) -> tuple[dict | None, str]:
    """A JSON log record in the line (maybe after a prefix), and any text after it."""
    at = line.find("{")
    if at < 0:
        return (None, "") if line not in ("null", "{}", "[]") else ({}, "")
    try:
        record, end = json.JSONDecoder().raw_decode(line[at:])
    except ValueError:
        return None, ""
    if not isinstance(record, dict):
        return None, ""
    return record, line[at + end:].strip()


def _record_message(record: dict) -> str:
    for key in ("msg", "message", "error"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _noise(line: str) -> bool:
    """Traceback frames and separators: not a message."""
    return (line in ("null", "None") or line.startswith(("Traceback (most recent call last)", "File \"", "---"))
            or line == "^" * len(line))


def failed_nodes(failures_json: str) -> list[dict] | None:
    """Argo's `{{workflow.failures}}` as its list of failed nodes; None when it is not such a list."""
    try:
        failures = json.loads(failures_json or "[]")
    except ValueError:
        return None
    return [f for f in failures if isinstance(f, dict)] if isinstance(failures, list) else None


def failure_types(failures_json: str) -> set[str]:
    """The error types (`error_type` of the JSON log records) in Argo's `{{workflow.failures}}`."""
    found = set()
    for failure in failed_nodes(failures_json) or []:
        for line in str(failure.get("message") or "").splitlines():
            record, _ = _json_record(line.strip())
            if record and record.get("error_type"):
                found.add(str(record["error_type"]))
    return found


def failed_steps(failures_json: str) -> set[str]:
    """The templates of the failed steps in Argo's `{{workflow.failures}}`."""
    return {str(f["templateName"]) for f in failed_nodes(failures_json) or [] if f.get("templateName")}


def readable_failures(failures_json: str) -> str:
    """Argo's `{{workflow.failures}}` (a JSON list of failed nodes) as one line per failed step."""
    failures = failed_nodes(failures_json)
    if failures is None:
        return readable_failure(str(failures_json))
    lines = [f"{f.get('displayName', '?')}: {readable_failure(f.get('message') or '') or f.get('phase', '')}"
             for f in failures if f.get("templateName")]
    return "; ".join(lines)


class JsonLines(logging.Formatter):
    FIELDS = ("step", "transient", "error_type", "model", "version", "env", "file", "bytes", "total", "rate")

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        line.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging() -> None:
    root = logging.getLogger()
    if any(getattr(h, "_mlferry", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._mlferry = True  # type: ignore[attr-defined]
    if os.environ.get("MLFERRY_LOG_FORMAT", "text") == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "mlflow", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

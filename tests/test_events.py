"""Events: one table of MLflow webhook events decides both the Sensor's filters (evaluated on the
generated Sensor, the way Argo Events evaluates them) and steps.event_filter.accept; MLflow's
signature, checked on the body as MLflow sent it and as Argo Events hands it on; the verify-event
step through Hera's runner; strict validation of the EventSource and the Sensor."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlferry.steps import signature
from mlferry.steps.event_filter import accept
from mlferry.sensors.objects import event_source, promotion_workflow, sensor
from mlferry.sensors.parameters import TRIGGER_PARAMETERS
from mlferry.steps.signature import SignatureError, canonical_body, verify
from mlferry.steps.settings import Settings
from mlferry.steps.verify_event import EventRejected, VerifyEventInput, verified_event
from mlferry.workflows.bundle import Bundle
from mlferry.engine.schema import ArgoValidationError, validate_argo

SECRET = "whsec-tëst"
SETTINGS = Settings(environments={
    "staging": {"aliases": ["staging"]},
    "production": {"aliases": ["production", "champion", "blue.green"]},
    "qa": {"aliases": []},  # nothing selects it: no dependency, no trigger
})
BUNDLE = Bundle(settings=SETTINGS)


# --- what MLflow sends -------------------------------------------------------------------------

def mlflow_body(event: Any) -> bytes:
    """The body as MLflow writes it: `json.dumps(webhook_payload)` (see test_mlflow_signs_what_we_verify)."""
    return json.dumps(event).encode("utf-8")


def mlflow_signature(delivery_id: str, timestamp: str, body: bytes, secret: str = SECRET) -> str:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    return _generate_hmac_signature(secret, delivery_id, timestamp, body.decode("utf-8"))


def alias_event(alias: Any = "staging", action: str = "created", name: Any = "fraud", **data: Any) -> dict:
    body = {"name": name, "alias": alias, **data}
    if action == "created":
        body.setdefault("version", "3")
    return {"entity": "model_version_alias", "action": action, "timestamp": "2025-01-01T00:00:00+00:00",
            "data": body}


# --- what Argo Events does with it, in Python ----------------------------------------------------

def go_reencode(body: bytes) -> str:
    """What Argo Events' webhook source hands on: Go's json.Marshal of a json.RawMessage compacts it
    (whitespace outside strings dropped) and HTML-escapes <, > and & (U+2028/9 are already escaped,
    MLflow's body being ASCII)."""
    out, in_string, escaped = [], False, False
    for c in body.decode("utf-8"):
        if in_string:
            out.append(HTML_ESCAPES.get(c, c))
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c not in " \t\r\n":
            out.append(c)
            in_string = c == '"'
    return "".join(out)


HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


class RawJSON(str):
    """JSON text kept as the event source wrote it: gjson returns a JSON-typed result verbatim."""


def webhook_event(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The event data a webhook EventSource publishes: `{header: {Name: [values]}, body: <JSON>}`."""
    return {"header": {name: [value] for name, value in headers.items()}, "body": RawJSON(go_reencode(body))}


def gjson_get(data: Any, path: str) -> tuple[bool, Any]:
    """gjson's plain dot paths (keys and array indexes; mlferry uses no wildcards or escapes)."""
    assert not set(path) & set("*?\\|#@"), f"gjson feature not emulated: {path}"
    node = data
    for key in path.split("."):
        node = json.loads(node) if isinstance(node, RawJSON) else node
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False, None
    return True, node


def gjson_string(node: Any) -> str:
    """gjson Result.String(): a string as is, null as "", anything else as its JSON text."""
    if isinstance(node, RawJSON):
        return str(node)
    if isinstance(node, str):
        return node
    return "" if node is None else json.dumps(node, separators=(",", ":"))


def go_regexp_matches(pattern: str, text: str) -> bool:
    """Go's regexp.Match: unanchored search; `$` is the end of the text (Python's `$` also matches
    before a final newline, Go's `\\z`-like `$` does not)."""
    python, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            python.append(pattern[i:i + 2])
            i += 2
            continue
        python.append(r"\Z" if pattern[i] == "$" else pattern[i])
        i += 1
    return re.search("".join(python), text) is not None


def data_filter_passes(data_filter: dict, data: Any) -> bool:
    """One Argo Events data filter (type string, comparator = or !=): a missing path fails it."""
    assert data_filter["type"] == "string" and data_filter.get("comparator", "=") in ("=", "!=")
    exists, node = gjson_get(data, data_filter["path"])
    if not exists or not data_filter.get("value"):
        return False
    text = gjson_string(node)
    want = data_filter.get("comparator", "=") == "="
    return any(go_regexp_matches(value, text) == want for value in data_filter["value"])


def dependency_passes(dependency: dict, data: Any) -> bool:
    filters = dependency.get("filters") or {}
    assert set(filters) <= {"data"} and dependency.get("filtersLogicalOperator", "and") == "and"
    return all(data_filter_passes(f, data) for f in filters.get("data", []))  # dataLogicalOperator: and


def fired_triggers(sensor_doc: dict, data: Any) -> list[dict]:
    """The triggers one event fires; mlferry's conditions name a single dependency each."""
    dependencies = {d["name"]: d for d in sensor_doc["spec"]["dependencies"]}
    fired = []
    for trigger in sensor_doc["spec"]["triggers"]:
        condition = trigger["template"]["conditions"]
        assert condition in dependencies, f"conditions {condition!r} is not a single dependency"
        if dependency_passes(dependencies[condition], data):
            fired.append(trigger)
    return fired


def submitted_parameters(trigger: dict, data: Any, context: dict | None = None) -> dict[str, str]:
    """The Workflow the trigger submits, its parameters set from the event as the Sensor sets them
    (`context`: the event's CloudEvents context, stamped by the EventSource)."""
    workflow = copy.deepcopy(trigger["template"]["argoWorkflow"]["source"]["resource"])
    parameters = workflow["spec"]["arguments"]["parameters"]
    context = context or {"time": "2026-01-01T00:00:00Z"}
    for parameter in trigger["template"]["argoWorkflow"]["parameters"]:
        src = parameter["src"]
        key = src.get("dataKey") or src["contextKey"]
        exists, node = gjson_get(data if "dataKey" in src else context, key)
        assert exists or "value" in src, f"the Sensor would fail: no {key} and no default"
        value = gjson_string(node) if exists else src["value"]
        index = re.fullmatch(r"spec\.arguments\.parameters\.(\d+)\.value", parameter["dest"]).group(1)
        parameters[int(index)]["value"] = value
    return {p["name"]: p["value"] for p in parameters}


# --- the table ---------------------------------------------------------------------------------

# (event, the environment it promotes to, or None when it must be ignored)
EVENTS = [
    pytest.param(alias_event("staging"), "staging", id="created-staging"),
    pytest.param(alias_event("champion"), "production", id="created-champion"),
    pytest.param(alias_event("production", name="Modèle <fraud> & ünïcode \u2028"), "production",
                 id="created-unicode-model"),
    pytest.param(alias_event("blue.green"), "production", id="created-dotted-alias"),
    pytest.param(alias_event("staging", action="deleted"), "staging", id="deleted-staging"),
    pytest.param(alias_event("champion", action="deleted"), "production", id="deleted-champion"),
    pytest.param(alias_event("staging", extra={"nested": [1.5, {"x": None}]}), "staging", id="unknown-fields-kept"),
    pytest.param(alias_event("canary"), None, id="unconfigured-alias"),
    pytest.param(alias_event("blueXgreen"), None, id="dot-is-not-a-wildcard"),
    pytest.param(alias_event("staging-old"), None, id="alias-prefix"),
    pytest.param(alias_event("pre-staging"), None, id="alias-suffix"),
    pytest.param(alias_event("staging\n"), None, id="alias-trailing-newline"),
    pytest.param(alias_event("Staging"), None, id="alias-case"),
    pytest.param(alias_event("staging", action="updated"), None, id="unknown-action"),
    pytest.param({"entity": "model_version_tag", "action": "set", "timestamp": "t",
                  "data": {"name": "fraud", "version": "3", "key": "mlferry.staging.status", "value": "committed"}},
                 None, id="mlferry-own-tag-write"),
    pytest.param({"entity": "model_version", "action": "created", "timestamp": "t",
                  "data": {"name": "fraud", "version": "4", "source": "models:/m-1", "run_id": "r",
                           "tags": {}, "description": None}}, None, id="model-version-created"),
    pytest.param({**alias_event("staging"), "entity": "prompt_alias"}, None, id="prompt-alias"),
    pytest.param({**alias_event("staging"), "entity": "Model_Version_Alias"}, None, id="entity-case"),
    pytest.param({k: v for k, v in alias_event().items() if k != "data"}, None, id="no-data"),
    pytest.param({**alias_event(), "data": "fraud/staging"}, None, id="data-not-an-object"),
    pytest.param({**alias_event(), "data": {"name": "fraud", "version": "3"}}, None, id="no-alias"),
    pytest.param(alias_event(None), None, id="alias-null"),
    pytest.param({**alias_event(), "data": {"alias": "staging", "version": "3"}}, None, id="no-model"),
    pytest.param(alias_event(name=""), None, id="empty-model"),
    pytest.param([alias_event()], None, id="body-is-a-list"),
]


def delivery(event: Any, *, at: float | None = None) -> tuple[bytes, dict[str, str]]:
    body, timestamp = mlflow_body(event), str(int(time.time() if at is None else at))
    headers = {"Content-Type": "application/json", "X-Mlflow-Delivery-Id": "d-1", "X-Mlflow-Timestamp": timestamp,
               "X-Mlflow-Signature": mlflow_signature("d-1", timestamp, body)}
    return body, headers


@pytest.mark.parametrize("event,env", EVENTS)
def test_sensor_filters_of_the_generated_sensor(event: Any, env: str | None) -> None:
    body, headers = delivery(event)
    data = webhook_event(body, headers)
    fired = fired_triggers(sensor(BUNDLE), data)

    assert [t["template"]["name"] for t in fired] == ([f"promote-{env}"] if env else [])
    if env:  # what the Workflow gets is what verify-event accepts
        params = submitted_parameters(fired[0], data)
        assert (params["model"], params["alias"], params["env"], params["trigger"]) == \
               (event["data"]["name"], event["data"]["alias"], env, "webhook")
        inputs = VerifyEventInput(**{k: params[k] for k in ("delivery_id", "timestamp", "signature", "body")})
        verified = verified_event(inputs, SECRET, SETTINGS, now=time.time())
        assert (verified.model, verified.alias, verified.env, verified.action) == \
               (event["data"]["name"], event["data"]["alias"], env, event["action"])


@pytest.mark.parametrize("event,env", EVENTS)
def test_accept_decides_as_the_sensor_does(event: Any, env: str | None) -> None:
    decision = accept(event, SETTINGS)

    assert decision.accepted == (env is not None)
    if env:
        assert (decision.env, decision.model, decision.alias, decision.action) == \
               (env, event["data"]["name"], event["data"]["alias"], event["action"])
        assert decision.version == event["data"].get("version", "")
    else:
        assert decision.reason and not decision.env


def test_the_sensor_prefilters_and_verify_event_has_the_last_word() -> None:
    # Argo Events' string filters read a number as its text; accept() wants strings. Such an event
    # passes the Sensor and is stopped by verify-event, before any side effect.
    event = alias_event("staging", name=12)
    body, headers = delivery(event)
    assert len(fired_triggers(sensor(BUNDLE), webhook_event(body, headers))) == 1
    assert not accept(event, SETTINGS).accepted
    inputs = VerifyEventInput(delivery_id="d-1", timestamp=headers["X-Mlflow-Timestamp"],
                              signature=headers["X-Mlflow-Signature"], body=go_reencode(body))
    with pytest.raises(EventRejected, match="signed but not a promotion: the event names no model"):
        verified_event(inputs, SECRET, SETTINGS, now=time.time())


# --- the signature -----------------------------------------------------------------------------

PAYLOADS = {
    "unicode": {"name": "Modèle ✓ 模型 \U0001f680", "alias": "staging", "version": "1"},
    "html": {"name": "a<b>&c", "alias": "production"},
    "floats": {"name": "m", "metrics": [0.1, 1e-07, 1e16, -0.0, 123456789.123456789, 2.5e-300]},
    "nesting": {"name": "m", "tags": {"a": {"b": [1, {"c": [None, True, False, "\u2028\n\t\"\\"]}]}}},
}


@pytest.fixture
def sent_by_mlflow(monkeypatch):
    """What MLflow's own delivery code (mlflow.webhooks.delivery) posts, captured instead of sent."""
    from mlflow.entities.webhook import Webhook, WebhookEvent
    from mlflow.webhooks.delivery import _send_webhook_request

    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")

    class Capture:
        def post(self, url, data, headers, timeout):
            self.body, self.headers = data, headers

    def send(payload: dict, secret: str | None = SECRET) -> tuple[bytes, dict[str, str]]:
        event = WebhookEvent("model_version_alias", "created")
        webhook = Webhook(webhook_id="w1", name="mlferry", url="https://127.0.0.1/mlflow", events=[event],
                          creation_timestamp=0, last_updated_timestamp=0, secret=secret)
        session = Capture()
        _send_webhook_request(webhook, payload, event, session)
        return session.body, session.headers

    return send


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_mlflow_signs_what_we_verify(sent_by_mlflow, payload: dict) -> None:
    body, headers = sent_by_mlflow(payload)
    args = (headers[signature.DELIVERY_ID_HEADER], headers[signature.TIMESTAMP_HEADER])

    verify(SECRET, *args, body, headers[signature.SIGNATURE_HEADER], now=time.time())
    reencoded = go_reencode(body)
    assert canonical_body(json.loads(reencoded)) == body  # the bytes MLflow signed, rebuilt
    verify(SECRET, *args, canonical_body(json.loads(reencoded)), headers[signature.SIGNATURE_HEADER],
           now=time.time())
    assert signature.sign(SECRET, *args, body) == headers[signature.SIGNATURE_HEADER]


def test_header_names_are_mlflows() -> None:
    from mlflow.webhooks import constants

    assert (signature.SIGNATURE_HEADER, signature.TIMESTAMP_HEADER, signature.DELIVERY_ID_HEADER,
            signature.SIGNATURE_VERSION) == (constants.WEBHOOK_SIGNATURE_HEADER, constants.WEBHOOK_TIMESTAMP_HEADER,
                                             constants.WEBHOOK_DELIVERY_ID_HEADER, constants.WEBHOOK_SIGNATURE_VERSION)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_canonical_body_undoes_argo_events_reencoding(payload: Any) -> None:
    body = mlflow_body(payload)
    assert canonical_body(json.loads(go_reencode(body))) == body


def test_go_reencoding_is_what_we_think() -> None:
    body = mlflow_body({"a": "x < y & \"q\" \\ é", "b": [1.5, {"c": None}]})
    assert go_reencode(body) == '{"a":"x \\u003c y \\u0026 \\"q\\" \\\\ \\u00e9","b":[1.5,{"c":null}]}'


def test_forged_stale_and_unsigned_events_are_rejected(sent_by_mlflow) -> None:
    body, headers = sent_by_mlflow(PAYLOADS["unicode"])
    delivery_id, timestamp, good = (headers[signature.DELIVERY_ID_HEADER], headers[signature.TIMESTAMP_HEADER],
                                    headers[signature.SIGNATURE_HEADER])
    now = int(timestamp)
    cases = {
        "another secret": ("other", delivery_id, timestamp, body, good, now),
        "changed body": (SECRET, delivery_id, timestamp, body.replace(b"staging", b"production"), good, now),
        "another delivery": (SECRET, "d-2", timestamp, body, good, now),
        "forged digest": (SECRET, delivery_id, timestamp, body, "v1," + "A" * 44, now),
        "other version": (SECRET, delivery_id, timestamp, body, "v2" + good[2:], now),
        "stale": (SECRET, delivery_id, timestamp, body, good, now + 301),
        "from the future": (SECRET, delivery_id, timestamp, body, good, now - 301),
        "bad timestamp": (SECRET, delivery_id, "yesterday", body, good, now),
        "unsigned": (SECRET, delivery_id, timestamp, body, "", now),
        "no secret": ("", delivery_id, timestamp, body, good, now),
    }
    for why, (secret, *args, now_) in cases.items():
        with pytest.raises(SignatureError):
            verify(secret, *args, now=now_)
            pytest.fail(f"accepted: {why}")
    verify(SECRET, delivery_id, timestamp, body, good, now=now + 299)
    verify(SECRET, delivery_id, timestamp, body, f"v1,{'B' * 44} {good}", now=now)  # rotation: any one matches


def test_unsigned_mlflow_delivery_is_rejected(sent_by_mlflow) -> None:
    body, headers = sent_by_mlflow(PAYLOADS["unicode"], secret=None)
    assert signature.SIGNATURE_HEADER not in headers
    with pytest.raises(SignatureError, match="unsigned"):
        verify(SECRET, headers[signature.DELIVERY_ID_HEADER], headers[signature.TIMESTAMP_HEADER], body, "",
               now=time.time())


# --- verify-event through Hera's runner --------------------------------------------------------

def run_verify_event(tmp_path: Path, inputs: dict[str, str], secret: str = SECRET) -> tuple[subprocess.CompletedProcess, Path]:
    args = tmp_path / "args.json"
    # Argo passes every input the template declares; the run's own parameters default to "".
    inputs = {"model": "", "alias": "", "env": "", "received_at": "", **inputs}
    tmp_path.mkdir(parents=True, exist_ok=True)
    args.write_text(json.dumps([{"name": k, "value": v} for k, v in inputs.items()]))
    outputs = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFERRY_")}
    env.update(hera__outputs_directory=str(outputs), MLFERRY_WEBHOOK_SECRET=secret,
               MLFERRY_SETTINGS=BUNDLE.settings_yaml())
    done = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "mlferry.steps.verify_event:verify_event",
                           str(args)], cwd=tmp_path, env=env, capture_output=True, text=True)
    return done, outputs / "parameters"


def argo_inputs(event: Any, **override: str) -> dict[str, str]:
    """The task's inputs as the Sensor fills them: headers, and the body as Argo Events re-encoded it."""
    body, headers = delivery(event)
    return {"delivery_id": "d-1", "timestamp": headers["X-Mlflow-Timestamp"],
            "signature": headers["X-Mlflow-Signature"], "body": go_reencode(body), **override}


def test_the_age_is_measured_at_receipt_not_when_the_pod_starts(tmp_path: Path) -> None:
    from mlferry.receiver import rfc3339

    sent = time.time() - 400  # queued, then a slow image pull: the pod starts 400 s after MLflow signed
    body, headers = delivery(alias_event("staging"), at=sent)
    inputs = {"delivery_id": "d-1", "timestamp": headers["X-Mlflow-Timestamp"],
              "signature": headers["X-Mlflow-Signature"], "body": go_reencode(body)}
    received, _ = run_verify_event(tmp_path / "at-receipt", {**inputs, "received_at": rfc3339(sent + 5)})
    assert received.returncode == 0, received.stderr
    late, _ = run_verify_event(tmp_path / "no-receipt", inputs)
    assert late.returncode == 1 and "too old to trust" in late.stderr
    # A receipt time ahead of the clock is not believed: the age is measured now, and is too old.
    future, _ = run_verify_event(tmp_path / "future", {**inputs, "received_at": rfc3339(time.time() + 3600)})
    assert future.returncode == 1 and "too old to trust" in future.stderr


def test_verify_event_step_accepts_a_signed_event(tmp_path: Path) -> None:
    done, outputs = run_verify_event(tmp_path, argo_inputs(alias_event("champion", name="Modèle <x>")))

    assert done.returncode == 0, done.stderr
    read = {p.name: p.read_text() for p in outputs.iterdir()}
    assert read == {"verified": "true", "delivery_id": "d-1", "action": "created", "model": "Modèle <x>",
                    "alias": "champion", "version": "3", "env": "production"}


def test_verify_event_step_passes_runs_without_an_event(tmp_path: Path) -> None:
    done, outputs = run_verify_event(tmp_path, {"delivery_id": "", "timestamp": "", "signature": "", "body": ""},
                                     secret="")
    assert done.returncode == 0, done.stderr
    assert (outputs / "verified").read_text() == "false"


@pytest.mark.parametrize("override,message", [
    ({"signature": "v1," + "A" * 44}, "does not match the body"),
    ({"timestamp": str(int(time.time()) - 3600)}, "too old to trust"),
    ({"signature": ""}, "unsigned"),
    ({"body": "{not json"}, "not JSON"),
])
def test_verify_event_step_fails_a_rejected_event(tmp_path: Path, override: dict, message: str) -> None:
    done, _ = run_verify_event(tmp_path, argo_inputs(alias_event("staging"), **override))

    assert done.returncode == 1, done.stderr  # PERMANENT_EXIT: Argo does not retry it
    assert message in done.stderr


def test_a_signed_event_re_aimed_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    """The attack: a captured signed `deleted` event for model A, re-sent with `"name": "victim"`
    placed before A's own name. Python keeps the last key (A, so the signature checks out) and the
    Sensor's gjson the first (victim). The step refuses any body that repeats a key."""
    signed = argo_inputs(alias_event("production", action="deleted", name="A"))
    tampered = signed["body"].replace('"data":{', '"data":{"name":"victim",', 1)
    assert json.loads(tampered)["data"]["name"] == "A"  # what a lenient parser would have verified

    done, outputs = run_verify_event(tmp_path, {**signed, "body": tampered})
    assert done.returncode == 1, done.stderr
    assert "repeats the key 'name'" in done.stderr
    assert not (outputs / "model").exists()  # nothing downstream gets a model to act on


def test_verify_event_step_fails_a_signed_event_that_is_no_promotion(tmp_path: Path) -> None:
    done, _ = run_verify_event(tmp_path, argo_inputs(alias_event("canary")))
    assert done.returncode == 1 and "alias 'canary' selects no environment" in done.stderr


# --- the objects -------------------------------------------------------------------------------

def test_event_source_and_sensor_are_valid_argo_objects() -> None:
    for doc in (event_source(BUNDLE), sensor(BUNDLE), promotion_workflow(BUNDLE, "staging")):
        validate_argo(doc)
    tls = Bundle(events={"tls_secret": "webhook-tls", "auth_secret": "webhook-token"})
    webhook = event_source(tls)["spec"]["webhook"]["mlflow"]
    validate_argo(event_source(tls))
    assert webhook["serverCertSecret"] == {"name": "webhook-tls", "key": "tls.crt"}
    assert webhook["authSecret"] == {"name": "webhook-token", "key": "token"}
    assert webhook["url"].startswith("https://mlferry-mlflow-eventsource-svc.ml.svc:12000/")


@pytest.mark.parametrize("build,where", [
    (event_source, ("spec", "webhook", "mlflow")),
    (sensor, ("spec", "dependencies", 0, "filters", "data", 0)),
    (sensor, ("spec", "triggers", 0, "retryStrategy")),
])
def test_an_unknown_field_is_rejected(build, where) -> None:
    doc = build(BUNDLE)
    node = doc
    for key in where:
        node = node[key]
    node["contaner"] = "typo"
    with pytest.raises(ArgoValidationError, match="contaner"):
        validate_argo(doc)


def test_heras_nested_webhook_context_is_rejected() -> None:
    # Argo Events reads the webhook context inline; nested under webhookContext it would be ignored.
    doc = event_source(BUNDLE)
    doc["spec"]["webhook"]["mlflow"] = {"webhookContext": doc["spec"]["webhook"]["mlflow"]}
    with pytest.raises(ArgoValidationError, match="webhookContext"):
        validate_argo(doc)


def test_the_submitted_workflow_fits_the_promote_template() -> None:
    from mlferry import engine
    from mlferry.steps.verify_event import EVENT_PARAMETERS
    from mlferry.workflows.promote import promote_template

    template = promote_template(BUNDLE).to_dict()
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    for trigger in sensor(BUNDLE)["spec"]["triggers"]:
        workflow = trigger["template"]["argoWorkflow"]["source"]["resource"]
        names = [p["name"] for p in workflow["spec"]["arguments"]["parameters"]]
        assert set(names) <= declared and {*TRIGGER_PARAMETERS, *EVENT_PARAMETERS} <= set(names)
        engine.load(workflow, workflow_templates=[template])  # the local executor runs it as Argo would


def test_environments_without_aliases_get_no_trigger() -> None:
    doc = sensor(BUNDLE)
    assert [t["template"]["name"] for t in doc["spec"]["triggers"]] == ["promote-staging", "promote-production"]
    assert all(t["atLeastOnce"] and t["retryStrategy"]["steps"] >= 1 and t["rateLimit"]["requestsPerUnit"] >= 1
               for t in doc["spec"]["triggers"])

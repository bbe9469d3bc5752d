"""Argo Events objects: the MLflow webhook EventSource and the Sensor that submits promotions.

    MLflow ──POST──▶ EventSource mlferry-mlflow ──▶ Sensor mlferry-promotion
                                                    one dependency + trigger per environment
                                                    ──▶ Workflow from WorkflowTemplate mlferry-promote

The Sensor only pre-filters (which entity, action, alias; steps/event_filter.py): it cannot check
MLflow's signature, so each Workflow gets the delivery id, timestamp, signature and body, and its
first task, verify-event, checks them before anything else runs.

Built with hera.events.models where those models match Argo Events; three of them do not (the
inline webhook context, Backoff's duration and factor, the trigger's resource), and those parts are
written in the shape the controller reads (see mlferry/engine/schema.py, which checks the same shapes).
"""

from __future__ import annotations

from typing import Any, Iterable

from hera.events.models import (
    ArgoWorkflowTrigger,
    EventDependency,
    EventDependencyFilter,
    EventSourceSpec,
    RateLimit,
    SensorSpec,
    Service,
    Template,
    Trigger,
    TriggerParameter,
    TriggerParameterSource,
    TriggerTemplate,
    WebhookContext,
)
from hera.events.models.io.k8s.api.core.v1 import SecretKeySelector, ServicePort
from hera.events.models.io.k8s.apimachinery.pkg.apis.meta.v1 import ObjectMeta
from hera.workflows import models as wf

from mlferry.sensors.parameters import CONTEXT, TRIGGER_PARAMETERS, data_filters, event_values
from mlferry.steps.event_filter import environment_aliases
from mlferry.steps.settings import SettingsError
from mlferry.workflows.bundle import Bundle
from mlferry.workflows.promote import NAME as PROMOTE_TEMPLATE

API_VERSION = "argoproj.io/v1alpha1"
EVENT_SOURCE = "mlferry-mlflow"
EVENT_NAME = "mlflow"
SENSOR = "mlferry-promotion"

def event_source(bundle: Bundle) -> dict[str, Any]:
    events = bundle.events
    spec = _dump(EventSourceSpec(
        event_bus_name=events.event_bus,
        service=Service(ports=[ServicePort(name="webhook", port=events.port)]),
    ))
    spec["webhook"] = {EVENT_NAME: _webhook(bundle)}
    return _document("EventSource", EVENT_SOURCE, bundle, spec)


def sensor(bundle: Bundle) -> dict[str, Any]:
    by_env = environment_aliases(bundle.settings)
    if not by_env:
        raise SettingsError("no environment has an alias, so no webhook could ever start a promotion")
    spec = _dump(SensorSpec(
        event_bus_name=bundle.events.event_bus,
        template=Template(service_account_name=bundle.events.service_account),
        dependencies=[_dependency(env, aliases) for env, aliases in by_env.items()],
    ))
    spec["triggers"] = [_trigger(bundle, env) for env in by_env]
    return _document("Sensor", SENSOR, bundle, spec)


def webhook_url(bundle: Bundle) -> str:
    """Where MLflow posts, inside the cluster (Argo Events names the Service `<source>-eventsource-svc`)."""
    scheme = "https" if bundle.events.tls_secret else "http"
    return (f"{scheme}://{EVENT_SOURCE}-eventsource-svc.{bundle.namespace}.svc:{bundle.events.port}"
            f"{bundle.events.path}")


# --- the EventSource ---------------------------------------------------------------------------

def _webhook(bundle: Bundle) -> dict[str, Any]:
    events = bundle.events
    tls = events.tls_secret
    context = WebhookContext(
        url=webhook_url(bundle),  # informational for a plain webhook, but Argo Events' schema requires it
        endpoint=events.path,
        port=str(events.port),
        method="POST",
        server_cert_secret=SecretKeySelector(name=tls, key="tls.crt") if tls else None,
        server_key_secret=SecretKeySelector(name=tls, key="tls.key") if tls else None,
        auth_secret=(SecretKeySelector(name=events.auth_secret, key=events.auth_secret_key)
                     if events.auth_secret else None),
    )
    return _dump(context)  # inline: Argo Events reads no `webhookContext` key here


# --- the Sensor --------------------------------------------------------------------------------

def dependency_name(env: str) -> str:
    return f"mlflow-alias-{env}"


def _dependency(env: str, aliases: tuple[str, ...]) -> EventDependency:
    return EventDependency(
        name=dependency_name(env),
        event_source_name=EVENT_SOURCE,
        event_name=EVENT_NAME,
        filters=EventDependencyFilter(data=data_filters(aliases)),
    )


def _trigger(bundle: Bundle, env: str) -> dict[str, Any]:
    events = bundle.events
    workflow = promotion_workflow(bundle, env)
    names = [p["name"] for p in workflow["spec"]["arguments"]["parameters"]]
    trigger = _dump(Trigger(
        template=TriggerTemplate(
            name=f"promote-{env}",
            conditions=dependency_name(env),  # without it a trigger waits for every dependency
            argo_workflow=ArgoWorkflowTrigger(operation="submit", parameters=[
                _parameter(env, names.index(name), path, default)
                for name, (path, default) in TRIGGER_PARAMETERS.items()
            ]),
        ),
        rate_limit=RateLimit(unit="Minute", requests_per_unit=events.rate_limit_per_minute),
        # Argo Events retries a trigger only when it waits for the outcome (atLeastOnce).
        at_least_once=True,
    ))
    trigger["template"]["argoWorkflow"]["source"] = {"resource": workflow}
    trigger["retryStrategy"] = {"steps": events.retry_steps, "duration": "2s", "factor": 2, "jitter": 0.2}
    return trigger


def _parameter(env: str, index: int, path: str, default: str | None) -> TriggerParameter:
    key = ({"context_key": path.removeprefix(CONTEXT)} if path.startswith(CONTEXT) else {"data_key": path})
    return TriggerParameter(
        src=TriggerParameterSource(dependency_name=dependency_name(env), value=default, **key),
        dest=f"spec.arguments.parameters.{index}.value",
    )


def promotion_workflow(bundle: Bundle, env: str) -> dict[str, Any]:
    """The Workflow a trigger submits; the event's values are written into its parameters."""
    fixed = {"env": env, "trigger": "webhook"}
    parameters = [wf.Parameter(name=name, value=fixed.get(name, ""))
                  for name in [*TRIGGER_PARAMETERS, *fixed]]
    workflow = wf.Workflow(
        metadata=wf.ObjectMeta(generate_name=f"{PROMOTE_TEMPLATE}-{env}-", namespace=bundle.namespace,
                               labels={**bundle.labels, "mlferry.io/trigger": "webhook"}),
        spec=wf.WorkflowSpec(workflow_template_ref=wf.WorkflowTemplateRef(name=PROMOTE_TEMPLATE),
                             arguments=wf.Arguments(parameters=parameters)),
    )
    return {"apiVersion": API_VERSION, "kind": "Workflow", **_dump(workflow)}


def trigger_parameters(bundle: Bundle, env: str, headers: Iterable[tuple[str, str]], body_text: str,
                       payload: Any, received_at: str = "") -> dict[str, str]:
    """The parameters the trigger for `env` gives the workflow for this request: its fixed values
    (`env`, `trigger`) and the event's, read at the trigger's paths. The local receiver runs this."""
    workflow = promotion_workflow(bundle, env)
    values = {p["name"]: p.get("value", "") for p in workflow["spec"]["arguments"]["parameters"]}
    return {**values, **event_values(headers, body_text, payload, received_at)}


# --- shared ------------------------------------------------------------------------------------

def _document(kind: str, name: str, bundle: Bundle, spec: dict[str, Any]) -> dict[str, Any]:
    # Hera's models carry no apiVersion/kind; Argo needs both.
    metadata = _dump(ObjectMeta(name=name, namespace=bundle.namespace, labels=bundle.labels))
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")

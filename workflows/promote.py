"""WorkflowTemplate `mlferry-promote`: one model version into one environment.

    verify-event ── resolve ──┬── publish ──┬── commit ── report
                              └── render  ──┘      (mutex per GitOps repo and branch)
    on exit, when the run failed: report-failure (tags the version with the error)

Submitted by the Sensor on an alias webhook, by the reconcile fan-out, by `mlferry promote`
(through the local executor) and by hand:
`argo submit --from workflowtemplate/mlferry-promote -p model=… -p version=… -p env=…`.
"""

from hera.workflows import DAG, Parameter, SecretEnv, WorkflowTemplate
from hera.workflows.models import (
    Counter,
    Gauge,
    Histogram,
    Metrics,
    Mutex,
    PodGC,
    Prometheus,
    Synchronization,
    TTLStrategy,
    ValueFrom,
    WorkflowMetadata,
)
from hera.workflows.models import Parameter as ModelParameter

from steps.commit import commit
from steps.publish import publish
from steps.render import render
from steps.report import report
from steps.resolve import resolve
from steps.verify_event import SECRET_ENV, verify_event
from workflows.bundle import Bundle
from workflows.tasks import step_script

NAME = "mlferry-promote"
ENTRYPOINT = "promote"
EXIT_HANDLER = "exit-handler"
PARAMETERS = ("model", "version", "alias", "stage", "env", "trigger")
EVENT_PARAMETERS = ("delivery_id", "timestamp", "signature", "body")  # set by the Sensor; "" otherwise


def wf(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def out(task: str, name: str) -> str:
    return f"{{{{tasks.{task}.outputs.parameters.{name}}}}}"


def promote_template(bundle: Bundle) -> WorkflowTemplate:
    with WorkflowTemplate(
        name=NAME,
        namespace=bundle.namespace,
        labels=_labels(bundle),
        annotations={
            "workflows.argoproj.io/description": "Promote one MLflow model version into one environment "
                                                 "through the GitOps repo (mlferry).",
        },
        entrypoint=ENTRYPOINT,
        service_account_name=bundle.service_account,
        arguments=[
            Parameter(name="model", description="registered model name"),
            Parameter(name="version", value="", description="model version (or give alias/stage)"),
            Parameter(name="alias", value="", description="registry alias that selects the version"),
            Parameter(name="stage", value="", description="legacy registry stage that selects the version"),
            Parameter(name="env", enum=sorted(bundle.settings.environments), description="target environment"),
            Parameter(name="trigger", value="manual", description="why: manual, webhook, reconcile"),
            *[Parameter(name=name, value="", description="MLflow webhook event, checked by verify-event")
              for name in EVENT_PARAMETERS],
        ],
        workflow_metadata=WorkflowMetadata(
            labels={"app.kubernetes.io/managed-by": "mlferry"},
            annotations={
                "workflows.argoproj.io/title": f"promote {wf('model')} {wf('version')}{wf('alias')} to {wf('env')}",
                "workflows.argoproj.io/description": f"trigger: {wf('trigger')}",
            },
        ),
        active_deadline_seconds=bundle.workflow_deadline_seconds,
        pod_gc=PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        ttl_strategy=TTLStrategy(seconds_after_completion=bundle.ttl_seconds),
        metrics=_metrics(),
        on_exit=EXIT_HANDLER,
    ) as template:
        report_t = _promote_dag(bundle)
        _exit_handler(report_t)
    return template


def _promote_dag(bundle: Bundle) -> None:
    verify_t = step_script(bundle, "verify-event", verify_event)
    verify_t.env = [*verify_t.env, SecretEnv(name=SECRET_ENV, secret_name=bundle.secrets.webhook,
                                             secret_key=SECRET_ENV, optional=True)]
    resolve_t = step_script(bundle, "resolve", resolve)
    publish_t = step_script(bundle, "publish", publish)
    render_t = step_script(bundle, "render", render)
    commit_t = step_script(bundle, "commit", commit,
                           synchronization=Synchronization(mutexes=[Mutex(name=bundle.gitops_mutex)]))
    report_t = step_script(bundle, "report", report)

    with DAG(name=ENTRYPOINT, outputs=[
        ModelParameter(name="commit", value_from=ValueFrom(parameter=out("commit", "sha"))),
        ModelParameter(name="changed", value_from=ValueFrom(parameter=out("commit", "changed"))),
        ModelParameter(name="folder", value_from=ValueFrom(parameter=out("commit", "folder"))),
        ModelParameter(name="uri", value_from=ValueFrom(parameter=out("publish", "uri"))),
    ]):
        verified = verify_t(name="verify-event", arguments={k: wf(k) for k in EVENT_PARAMETERS})
        found = resolve_t(name="resolve", arguments={k: wf(k) for k in ("model", "version", "alias", "stage", "env")})
        version = {"model": out("resolve", "name"), "version": out("resolve", "version")}
        published = publish_t(name="publish", arguments={
            **version, "slug": out("resolve", "slug"), "source_uri": out("resolve", "source_uri")})
        rendered = render_t(name="render", arguments={
            **version, "slug": out("resolve", "slug"), "env": out("resolve", "env"),
            "run_id": out("resolve", "run_id"), "source_commit": out("resolve", "source_commit"),
            "description": out("resolve", "description")})
        committed = commit_t(name="commit", arguments={
            **version, "env": out("resolve", "env"), "folder": out("render", "folder"),
            "files": out("render", "files"), "run_id": out("resolve", "run_id"), "trigger": wf("trigger")})
        reported = report_t(name="report", arguments={
            **version, "env": out("resolve", "env"), "status": "committed",
            "commit": out("commit", "sha"), "uri": out("publish", "uri")})
        verified >> found >> [published, rendered]
        [published, rendered] >> committed >> reported
    return report_t


def _exit_handler(report_t) -> None:
    """Whatever failed, the version's tags say so, with the failing step's own error line.

    An exit handler because only there does Argo offer `{{workflow.failures}}`; before resolve
    the version may be unknown, so report looks it up from the alias or stage it was given.
    """
    with DAG(name=EXIT_HANDLER):
        report_t(
            name="report-failure",
            when="{{workflow.status}} != Succeeded",
            arguments={**{k: wf(k) for k in ("model", "version", "alias", "stage", "env")},
                       "status": "failed", "failures": "{{workflow.failures}}"},
        )


def _labels(bundle: Bundle) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlferry",
        "app.kubernetes.io/part-of": "mlferry",
        "app.kubernetes.io/version": bundle.version,
        "app.kubernetes.io/managed-by": "mlferry",
    }


def _metrics() -> Metrics:
    labels = [{"key": "env", "value": wf("env")}]
    return Metrics(prometheus=[
        Prometheus(name="mlferry_promotion_duration_seconds", help="Duration of mlferry promotions",
                   labels=labels, histogram=Histogram(value="{{workflow.duration}}",
                                                      buckets=["5", "15", "30", "60", "120", "300", "900"])),
        Prometheus(name="mlferry_promotions_total", help="mlferry promotions by outcome",
                   labels=[*labels, {"key": "status", "value": "{{workflow.status}}"}], counter=Counter(value="1")),
        Prometheus(name="mlferry_promotion_last_timestamp_seconds", help="When the last promotion ended",
                   labels=labels, gauge=Gauge(value="{{workflow.creationTimestamp.s}}", realtime=False)),
    ])

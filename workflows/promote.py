"""WorkflowTemplate `mlferry-promote`: make one environment of one model serve what the rule says.

    verify-event ── resolve ─┬─ publish ──┬── commit ── verify ── report    (the rule selects a version)
                             ├─ render  ──┘   (mutex per GitOps repo and branch)
                             └─ retire                          (nothing selects one: the registry says so)
    verify (the environment runs it and it answers its input example); when it does
    not: restore-alias (rollback) and the restore-* promotion of the version before, then give-up
    on exit, when the run failed: report-failure (tags the version with the error) and notify

verify-event passes on only what it verified (or, without an event, the parameters as given);
resolve applies the rule (steps/rule.py), so an event is only a hint to look again. An explicit
`version` other than the rule's is deployed as a hold, which webhooks and reconcile respect.

Submitted by the Sensor on an alias webhook, by the reconcile fan-out, by `mlferry promote`
(through the local executor) and by hand:
`argo submit --from workflowtemplate/mlferry-promote -p model=… -p version=… -p env=…`.
"""

from dataclasses import dataclass

from hera.workflows import DAG, Parameter, Script, WorkflowTemplate
from hera.workflows.models import (
    Counter,
    Gauge,
    Histogram,
    Metrics,
    Prometheus,
    ValueFrom,
    WorkflowMetadata,
)
from hera.workflows.models import Parameter as ModelParameter

from mlferry.steps.commit import commit
from mlferry.steps.notify import notify
from mlferry.steps.publish import publish
from mlferry.steps.render import render
from mlferry.steps.report import report
from mlferry.steps.resolve import resolve
from mlferry.steps.retire import retire
from mlferry.steps.rollback import rollback
from mlferry.steps.verify import GIVE_UP_STEP, give_up, verify
from mlferry.steps.verify_event import EVENT_PARAMETERS, verify_event
from mlferry.workflows.bundle import Bundle
from mlferry.workflows.tasks import gitops_lock, out, step_script, wf, workflow_settings

NAME = "mlferry-promote"
ENTRYPOINT = "promote"
EXIT_HANDLER = "exit-handler"


def promote_template(bundle: Bundle) -> WorkflowTemplate:
    with WorkflowTemplate(
        name=NAME,
        **workflow_settings(bundle),
        annotations={
            "workflows.argoproj.io/description": "Promote one MLflow model version into one environment "
                                                 "through the GitOps repo (mlferry).",
        },
        entrypoint=ENTRYPOINT,
        arguments=[
            Parameter(name="model", description="registered model name"),
            Parameter(name="version", value="", description="model version (or give alias/stage)"),
            Parameter(name="alias", value="", description="registry alias that selects the version"),
            Parameter(name="stage", value="", description="legacy registry stage that selects the version"),
            Parameter(name="env", enum=sorted(bundle.settings.environments), description="target environment"),
            Parameter(name="trigger", value="manual", description="why: manual, webhook, reconcile"),
            Parameter(name="hold", value="", description="a reason: deploy the version and hold it there"),
            Parameter(name="release", value="false", enum=["false", "true"],
                      description="end the environment's hold: deploy what the rule selects"),
            Parameter(name="force", value="false", enum=["false", "true"],
                      description="deploy another environment's alias here (recorded as a hold)"),
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
        metrics=_metrics(),
        on_exit=EXIT_HANDLER,
    ) as template:
        report_t = _promote_dag(bundle)
        _exit_handler(report_t, step_script(bundle, "notify", notify))
    return template


@dataclass(frozen=True)
class StepTemplates:
    """The step templates of a promotion, created once per WorkflowTemplate."""

    resolve: Script
    publish: Script
    render: Script
    commit: Script
    report: Script
    verify: Script

    @classmethod
    def of(cls, bundle: Bundle) -> "StepTemplates":
        return cls(
            resolve=step_script(bundle, "resolve", resolve),
            publish=step_script(bundle, "publish", publish),
            render=step_script(bundle, "render", render),
            commit=step_script(bundle, "commit", commit,
                               synchronization=gitops_lock(bundle)),
            report=step_script(bundle, "report", report),
            verify=step_script(bundle, "verify", verify),
        )


def promotion_tasks(steps: StepTemplates, request: dict[str, str], trigger: str, delivery_id: str = "",
                    prefix: str = "", depends: str = "", when: str = ""):
    """resolve → publish ∥ render → commit → verify → report, inside the current DAG.

    `depends` says `.Succeeded` explicitly: a bare task name would also accept a Skipped task
    (Argo's rule), and publish and render are skipped when resolve decides to retire. `prefix`
    names a second promotion in the same DAG (the restore after a failed verification), which
    `depends`/`when` start; it is not verified again, so a failing restore cannot loop.
    """
    def task(name: str) -> str:
        return prefix + name

    def result(name: str, parameter: str) -> str:
        return out(prefix + name, parameter)

    found = steps.resolve(name=task("resolve"), arguments={**request, "trigger": trigger},
                          **({"depends": depends} if depends else {}), **({"when": when} if when else {}))
    promoting = f"'{result('resolve', 'action')}' == 'promote'"
    version = {"model": result("resolve", "name"), "version": result("resolve", "version")}
    steps.publish(name=task("publish"), depends=f"{task('resolve')}.Succeeded", when=promoting, arguments={
        **version, "slug": result("resolve", "slug"), "source_uri": result("resolve", "source_uri")})
    steps.render(name=task("render"), depends=f"{task('resolve')}.Succeeded", when=promoting, arguments={
        **version, "slug": result("resolve", "slug"), "env": result("resolve", "env"),
        "run_id": result("resolve", "run_id"), "registry_text": result("resolve", "registry_text"),
        "serving": result("resolve", "serving"), "hold": result("resolve", "hold")})
    steps.commit(name=task("commit"), depends=f"{task('publish')}.Succeeded && {task('render')}.Succeeded", arguments={
        **version, "env": result("resolve", "env"), "folder": result("render", "folder"),
        "files": result("render", "files"), "run_id": result("resolve", "run_id"), "trigger": trigger,
        "hold": result("resolve", "hold"), "release": result("resolve", "release"),
        # The commit's trailers name the workflow, the alias and the webhook delivery behind it.
        "workflow": "{{workflow.name}}", "alias": request.get("alias", ""), "delivery_id": delivery_id,
        "follow_rule": "true"})
    report_after = f"{task('commit')}.Succeeded"
    verified = {}
    if not prefix:
        steps.verify(name="verify", depends="commit.Succeeded", arguments={
            **version, "env": out("resolve", "env"), "folder": out("commit", "folder"),
            "commit": out("commit", "sha"), "source_uri": out("resolve", "source_uri"),
            "previous": out("commit", "previous"), "signature": out("resolve", "signature"),
            "blocked": out("commit", "blocked"), "overtaken": out("commit", "overtaken")})
        report_after = "verify.Succeeded"
        verified = {"verified": out("verify", "outcome"), "message": out("verify", "reason")}
    steps.report(name=task("report"), depends=report_after, arguments={
        **version, "env": result("resolve", "env"), "hold": result("resolve", "hold"),
        "blocked": result("commit", "blocked"), "overtaken": result("commit", "overtaken"),
        # A restore replaces the version that failed verification: its tags keep saying `failed`.
        "previous": "" if prefix else result("commit", "previous"),
        "commit": result("commit", "sha"), "uri": result("publish", "uri"), **verified})
    return found


def restore_tasks(steps: StepTemplates, rollback_t: Script | None, give_up_t: Script, trigger: str) -> None:
    """After a failed verification: what the environment's on_failure says, then fail the run.

    rollback: the alias goes back to the version before (steps/rollback.py: tags on both), which is
    then deployed; hold: the version before is deployed as a hold; none: nothing. `give-up` ends the
    run failed with one line of what failed and what was restored (the exit handler notifies).
    Without `rollback_t` (a rollback's own promotion) nothing is restored: the run only fails.
    """
    failed = f"'{out('verify', 'outcome')}' == 'failed'"
    previous = out("commit", "previous")
    if rollback_t is None:
        give_up_t(name=GIVE_UP_STEP, when=failed, depends="report.Succeeded", arguments={
            "model": out("resolve", "name"), "version": out("resolve", "version"), "env": out("resolve", "env"),
            "reason": out("verify", "reason"), "restore": "none", "previous": previous})
        return
    restore = out("verify", "restore")
    rollback_t(name="restore-alias", depends="verify.Succeeded", when=f"{failed} && '{restore}' == 'rollback'",
               arguments={"model": out("resolve", "name"), "env": out("resolve", "env"), "to": previous,
                          "reason": out("verify", "reason"), "trigger": "verify"})
    promotion_tasks(steps, {"model": out("resolve", "name"), "env": out("resolve", "env"), "version": previous,
                            "hold": out("verify", "hold")}, trigger, prefix="restore-",
                    depends="verify.Succeeded && (restore-alias.Succeeded || restore-alias.Skipped)",
                    when=f"{failed} && '{restore}' != 'none'")
    give_up_t(name=GIVE_UP_STEP, when=failed,
              depends="verify.Succeeded && (restore-report.Succeeded || restore-report.Skipped || "
                      "restore-report.Omitted)",
              arguments={"model": out("resolve", "name"), "version": out("resolve", "version"),
                         "env": out("resolve", "env"), "reason": out("verify", "reason"), "restore": restore,
                         "previous": previous})


def promotion_outputs(retire: bool = True) -> list[ModelParameter]:
    # Defaults: a run that retired a folder (alias deleted) has no commit task outputs.
    def output(name: str, task: str, parameter: str) -> ModelParameter:
        return ModelParameter(name=name, value_from=ValueFrom(parameter=out(task, parameter), default=""))

    return [output("commit", "commit", "sha"), output("changed", "commit", "changed"),
            output("folder", "commit", "folder"), output("uri", "publish", "uri"),
            output("blocked", "commit", "blocked"), output("previous", "commit", "previous"),
            output("overtaken", "commit", "overtaken"),
            *([output("verified", "verify", "outcome")] if retire else []),
            *([output("retired", "retire", "changed")] if retire else [])]


def _promote_dag(bundle: Bundle) -> Script:
    verify_t = step_script(bundle, "verify-event", verify_event)
    retire_t = step_script(bundle, "retire", retire,
                           synchronization=gitops_lock(bundle))
    rollback_t = step_script(bundle, "rollback", rollback)
    give_up_t = step_script(bundle, GIVE_UP_STEP, give_up)
    steps = StepTemplates.of(bundle)
    with DAG(name=ENTRYPOINT, outputs=promotion_outputs()):
        verified = verify_t(name="verify-event",
                            arguments={k: wf(k) for k in ("model", "alias", "env", *EVENT_PARAMETERS)})
        # Only what verify-event vouches for drives the run: the model, alias and environment of the
        # signed event (or the parameters, when no event started it), and whether one did.
        request = {"model": out("verify-event", "model"), "env": out("verify-event", "env"),
                   "alias": out("verify-event", "alias"), "event": out("verify-event", "action"),
                   **{k: wf(k) for k in ("version", "stage", "hold", "release", "force")}}
        found = promotion_tasks(steps, request, wf("trigger"), delivery_id=out("verify-event", "delivery_id"))
        restore_tasks(steps, rollback_t, give_up_t, wf("trigger"))
        retire_t(name="retire", depends="resolve.Succeeded", when=f"'{out('resolve', 'action')}' == 'retire'",
                 arguments={"model": out("resolve", "name"), "env": out("resolve", "env"),
                            "release": out("resolve", "release"), "trigger": wf("trigger"),
                            "workflow": "{{workflow.name}}"})
        verified >> found
    return steps.report


def _exit_handler(report_t, notify_t) -> None:
    """Whatever failed, the version's tags say so, with the failing step's own error line, and the
    team's notification webhook hears it (a failed verification says there what it restored).

    An exit handler because only there does Argo offer `{{workflow.failures}}`; before resolve
    the version may be unknown, so report looks it up from the alias or stage it was given.
    """
    failed = "{{workflow.status}} != Succeeded"
    with DAG(name=EXIT_HANDLER):
        report_t(
            name="report-failure",
            when=failed,
            arguments={**{k: wf(k) for k in ("model", "version", "alias", "stage", "env")},
                       "status": "failed", "failures": "{{workflow.failures}}"},
        )
        notify_t(name="notify", when=failed, arguments={
            **{k: wf(k) for k in ("model", "version", "env")}, "status": "{{workflow.status}}",
            "failures": "{{workflow.failures}}", "workflow": "{{workflow.name}}",
            "namespace": "{{workflow.namespace}}"})


def _metrics() -> Metrics:
    labels = [{"key": "env", "value": wf("env")}]
    return Metrics(prometheus=[
        Prometheus(name="mlferry_promotion_duration_seconds", help="Duration of mlferry promotions",
                   labels=labels, histogram=Histogram(value="{{workflow.duration}}",
                                                      buckets=["5", "15", "30", "60", "120", "300", "900"])),
        Prometheus(name="mlferry_promotions_total", help="mlferry promotions by outcome",
                   labels=[*labels, {"key": "status", "value": "{{workflow.status}}"}], counter=Counter(value="1")),
        # Argo offers a workflow's start (creationTimestamp), not its end: the gauge says so by its name.
        Prometheus(name="mlferry_promotion_last_started_timestamp_seconds",
                   help="When the last promotion that ended had started",
                   labels=labels, gauge=Gauge(value="{{workflow.creationTimestamp.s}}", realtime=False)),
    ])

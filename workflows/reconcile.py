"""WorkflowTemplate and CronWorkflow `mlferry-reconcile`: make git match the registry.

    plan ──┬── promote-one × N   (withParam, at most `parallelism` at once)
           └── prune             (one commit removing every folder the registry confirms nothing selects)

The schedule catches what webhooks cannot: deliveries MLflow dropped, changes made while the
receiver was down, and legacy stage transitions, which send no webhook. Each promote-one is the
same DAG as `mlferry-promote` (workflows/promote.py), so both paths render and commit alike.
"""

from hera.workflows import DAG, CronWorkflow, Parameter, Task, WorkflowTemplate
from hera.workflows.models import WorkflowTemplateRef

from mlferry.steps.plan import plan
from mlferry.steps.retire import retire
from mlferry.steps.rollback import rollback
from mlferry.steps.verify import GIVE_UP_STEP, give_up
from mlferry.workflows.bundle import Bundle
from mlferry.workflows.promote import StepTemplates, promotion_tasks, restore_tasks
from mlferry.workflows.tasks import gitops_lock, inp, out, step_script, wf, workflow_settings

NAME = "mlferry-reconcile"
ENTRYPOINT = "reconcile"


def reconcile_template(bundle: Bundle) -> WorkflowTemplate:
    with WorkflowTemplate(
        name=NAME,
        **workflow_settings(bundle),
        annotations={"workflows.argoproj.io/description":
                     "Promote what the MLflow registry's aliases and stages ask for and git lacks; "
                     "prune folders whose alias is gone (mlferry)."},
        entrypoint=ENTRYPOINT,
        arguments=[
            Parameter(name="prune", value="auto", enum=["auto", "true", "false", "force"],
                      description="remove folders nothing selects; auto: the settings decide; "
                                  "force: even past the share guard (prune_max_share)"),
            Parameter(name="trigger", value="reconcile", description="why: reconcile, schedule"),
        ],
    ) as template:
        plan_t = step_script(bundle, "plan", plan)
        prune_t = step_script(bundle, "retire", retire,
                              synchronization=gitops_lock(bundle))
        rollback_t = step_script(bundle, "rollback", rollback)
        give_up_t = step_script(bundle, GIVE_UP_STEP, give_up)
        steps = StepTemplates.of(bundle)
        with DAG(name="promote-one", inputs=[Parameter(name=n) for n in ("item", "trigger")]) as promote_one:
            # The item whole, as JSON: Argo escapes string values of object items once more when they
            # are substituted field by field (argo-workflows issue 16061), so `"` or `\` in a model name
            # would arrive altered. No version: the rule decides again at resolve time.
            promotion_tasks(steps, {"item": inp("item")}, inp("trigger"))
            restore_tasks(steps, rollback_t, give_up_t, inp("trigger"))
        with DAG(name=ENTRYPOINT, parallelism=bundle.parallelism):
            plan_t(name="plan", arguments={"prune": wf("prune")})
            Task(name="promote", template=promote_one, depends="plan.Succeeded",
                 with_param=out("plan", "promotions"),
                 arguments={"item": "{{item}}", "trigger": wf("trigger")})
            prune_t(name="prune", depends="plan.Succeeded", when=f"{out('plan', 'removal_count')} > 0",
                    arguments={"targets": out("plan", "removals"), "prune": wf("prune"), "trigger": wf("trigger"),
                               "workflow": "{{workflow.name}}"})
    return template


def reconcile_cron(bundle: Bundle) -> CronWorkflow:
    return CronWorkflow(
        name=NAME,
        namespace=bundle.namespace,
        labels=bundle.labels,
        schedules=[bundle.schedule],
        timezone=bundle.timezone,
        # A reconcile still running when the next is due is doing the work already.
        concurrency_policy="Forbid",
        starting_deadline_seconds=300,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
        workflow_template_ref=WorkflowTemplateRef(name=NAME),
        service_account_name=bundle.service_account,
        arguments=[Parameter(name="trigger", value="schedule")],
    )

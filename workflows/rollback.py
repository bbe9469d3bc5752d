"""WorkflowTemplate `mlferry-rollback`: put one environment of one model back on an earlier version.

    rollback ── resolve ─┬─ publish ──┬── commit ── report
                         └─ render  ──┘

`rollback` moves the environment's alias back in the registry and tags both versions
(steps/rollback.py); the rest is the promotion of `mlferry-promote`, applying the rule, which now
selects the restored version. `mlferry rollback MODEL --env E [--to V]` submits it locally; on a
cluster: `argo submit --from workflowtemplate/mlferry-rollback -p model=… -p env=… [-p to=…]`.
"""

from hera.workflows import DAG, Parameter, WorkflowTemplate
from hera.workflows.models import WorkflowMetadata

from mlferry.steps.rollback import rollback
from mlferry.steps.verify import GIVE_UP_STEP, give_up
from mlferry.workflows.bundle import Bundle
from mlferry.workflows.promote import StepTemplates, promotion_outputs, promotion_tasks, restore_tasks
from mlferry.workflows.tasks import out, step_script, wf, workflow_settings

NAME = "mlferry-rollback"
ENTRYPOINT = "roll-back"  # the DAG; its first task runs the step template `rollback`


def rollback_template(bundle: Bundle) -> WorkflowTemplate:
    with WorkflowTemplate(
        name=NAME,
        **workflow_settings(bundle),
        annotations={"workflows.argoproj.io/description":
                     "Move an environment's MLflow alias back to an earlier version and deploy it (mlferry)."},
        entrypoint=ENTRYPOINT,
        arguments=[
            Parameter(name="model", description="registered model name"),
            Parameter(name="env", enum=sorted(bundle.settings.environments), description="environment to roll back"),
            Parameter(name="to", value="", description="version to restore (default: the one deployed before)"),
            Parameter(name="reason", value="", description="why (recorded in the registry's tags)"),
            Parameter(name="trigger", value="manual", description="who or what asked: manual, verify"),
        ],
        workflow_metadata=WorkflowMetadata(
            labels={"app.kubernetes.io/managed-by": "mlferry"},
            annotations={"workflows.argoproj.io/title": f"roll back {wf('model')} in {wf('env')}"},
        ),
    ) as template:
        rollback_t = step_script(bundle, "rollback", rollback)
        steps = StepTemplates.of(bundle)
        with DAG(name=ENTRYPOINT, outputs=promotion_outputs(retire=False)):
            moved = rollback_t(name="rollback", arguments={k: wf(k) for k in ("model", "env", "to", "reason",
                                                                               "trigger")})
            found = promotion_tasks(steps, {"model": out("rollback", "model"), "env": out("rollback", "env")},
                                    wf("trigger"))
            restore_tasks(steps, None, step_script(bundle, GIVE_UP_STEP, give_up), wf("trigger"))
            moved >> found
    return template

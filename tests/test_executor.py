"""The local executor runs Argo YAML as Argo would: what a user of `mlferry` can observe.

Templates come from Hera itself (so the YAML has exactly the shape Hera emits, runner steps in
tests/executor_steps.py) or are raw dicts for the edge cases. Container steps use `python -c`,
which starts in milliseconds; runner steps pay Hera's import once per task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hera.workflows import DAG, Parameter, WorkflowTemplate
from hera.workflows.models import ValueFrom

from tests.executor_steps import add_one, coin, items, price, refuse, shout, work
from mlferry.engine import ArgumentError, Cluster, PlanError, list_runs, load, load_run, new_run_dir, next_retry, run
from mlferry.engine.expressions import ExpressionError, evaluate_when, parse_depends, substitute
from mlferry.engine.nodes import Outcome

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------

def execute(doc, tmp_path: Path, parameters=None, **options):
    plan = load(doc, workflow_templates=options.pop("workflow_templates", ()))
    options.setdefault("lock_dir", tmp_path / "locks")
    return run(plan, parameters or {}, run_dir=new_run_dir(tmp_path / "runs", plan.generate_name), cwd=REPO,
               backoff_scale=0.01, kill_grace=0.5, **options)


def workflow(*templates, entrypoint="main", **spec) -> dict:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "t"},
            "spec": {"entrypoint": entrypoint, "templates": list(templates), **spec}}


def python(name: str, code: str, *, inputs=(), **extra) -> dict:
    """A container template running Python code (inputs substituted by the executor)."""
    template = {"name": name, "container": {"image": "python:3.11", "command": ["python", "-c", code]}, **extra}
    if inputs:
        template["inputs"] = {"parameters": [{"name": n} for n in inputs]}
    return template


def dag(name: str, *tasks, **extra) -> dict:
    return {"name": name, "dag": {"tasks": list(tasks)}, **extra}


def task(name: str, template: str, **fields) -> dict:
    args = fields.pop("args", None)
    if args:
        fields["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in args.items()]}
    return {"name": name, "template": template, **fields}


def journal_code(journal: Path, seconds: float) -> str:
    """Python that records [start, end] of its run in journal/<pid>.json."""
    return (f"import json,os,time; s=time.time(); time.sleep({seconds}); "
            f"open(os.path.join({str(journal)!r}, str(os.getpid())+'.json'),'w').write(json.dumps([s, time.time()]))")


def intervals(journal: Path) -> list[tuple[float, float]]:
    return sorted(tuple(json.loads(p.read_text())[:2]) for p in journal.glob("*.json"))


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, delta in edges:
        now += delta
        best = max(best, now)
    return best


# -- DAGs of Hera runner steps ----------------------------------------------------------------

def test_dag_passes_parameters_between_runner_steps_and_returns_workflow_outputs(tmp_path):
    with WorkflowTemplate(name="pricing", entrypoint="main", arguments={"model": "wine", "version": "3"}) as wt:
        with DAG(name="main", outputs=[Parameter(name="shouted", value_from=ValueFrom(
                parameter="{{tasks.shout.outputs.parameters.loud}}"))]):
            priced = price(arguments={"model": "{{workflow.parameters.model}}",
                                      "version": "{{workflow.parameters.version}}"})
            loud = shout(arguments={"label": priced.get_parameter("label")})
            priced >> loud

    result = execute(wt.to_dict(), tmp_path, {"version": "7"})

    assert result.phase == "Succeeded", result.message
    assert result.outputs == {"shouted": "WINE@V7"}
    first, second = result.task("price"), result.task("shout")
    assert first.outputs["doubled-version"] == "14"  # a Parameter(name=...) annotation
    assert second.started >= first.finished  # `depends` orders them
    assert load_run(tmp_path / "runs", result.run_id).outputs == {"shouted": "WINE@V7"}


def test_when_skips_a_task_and_its_dependents_still_run(tmp_path):
    with WorkflowTemplate(name="flip", entrypoint="main", arguments={"side": "heads"}) as wt:
        with DAG(name="main"):
            flip = coin(arguments={"side": "{{workflow.parameters.side}}"})
            heads = shout(name="on-heads", arguments={"label": "heads"}, when=f"{flip.result} == heads")
            tails = shout(name="on-tails", arguments={"label": "tails"}, when=f"{flip.result} == tails")
            after = shout(name="after", arguments={"label": "after"})
            flip >> [heads, tails]
            tails >> after

    result = execute(wt.to_dict(), tmp_path)

    assert result.phase == "Succeeded", result.message
    assert result.task("on-heads").outputs["loud"] == "HEADS"
    assert result.task("on-tails").phase == "Skipped"
    assert result.task("on-tails").message == "when 'heads == tails' evaluated false"
    assert result.task("after").phase == "Succeeded"  # a skipped dependency satisfies a plain depends


def test_with_param_fans_out_no_more_than_parallelism_at_once(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    with WorkflowTemplate(name="fan", entrypoint="main") as wt:
        with DAG(name="main", parallelism=2, outputs=[Parameter(name="all", value_from=ValueFrom(
                parameter="{{tasks.work.outputs.parameters}}"))]):
            produced = items(arguments={"count": "5"})
            fanned = work(with_param=produced.get_parameter("items"),
                          arguments={"n": "{{item.n}}", "journal": str(journal), "seconds": "0.6"})
            produced >> fanned

    result = execute(wt.to_dict(), tmp_path)

    assert result.phase == "Succeeded", result.message
    assert most_at_once(intervals(journal)) == 2
    assert len(intervals(journal)) == 5
    assert json.loads(result.outputs["all"]) == [{"done": f"done-{i}"} for i in range(5)]  # in item order
    assert result.task("work(3:n:3,name:item-3)").phase == "Succeeded"  # Argo's item node names


def test_a_failed_task_omits_its_dependents_runs_failure_handlers_and_surfaces_its_error(tmp_path):
    with WorkflowTemplate(name="failing", entrypoint="main") as wt:
        with DAG(name="main"):
            broken = refuse(arguments={"reason": "registry said no"})
            after = shout(name="after", arguments={"label": "never"})
            shout(name="on-failure", arguments={"label": "cleanup"}, depends="refuse.Failed")
            broken >> after

    events = []
    result = execute(wt.to_dict(), tmp_path, on_event=events.append)

    assert result.phase == "Failed"
    assert result.message.startswith("refuse: Error (exit code 1)")
    assert "RuntimeError: registry said no" in result.message  # the step's own last stderr lines
    assert result.task("after").phase == "Omitted"
    assert result.task("on-failure").phase == "Succeeded"
    assert "registry said no" in Path(result.task("refuse").log).read_text()
    assert ("refuse", "Failed") in [(e.name, e.phase) for e in events]


def test_an_inline_hera_script_runs_from_its_source_file(tmp_path):
    with WorkflowTemplate(name="inline", entrypoint="main") as wt:
        with DAG(name="main"):
            add_one(arguments={"count": "41"})

    result = execute(wt.to_dict(), tmp_path)

    assert result.task("add-one").outputs["result"] == "42"
    assert "print(count + 1)" in (Path(result.run_dir) / "pods" / "add-one-0" / "script").read_text()


# -- raw YAML: scheduling ---------------------------------------------------------------------

def test_independent_branches_run_in_parallel(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    doc = workflow(dag("main", task("a", "sleep"), task("b", "sleep")), python("sleep", journal_code(journal, 0.5)))

    result = execute(doc, tmp_path)

    assert result.phase == "Succeeded"
    assert most_at_once(intervals(journal)) == 2


def test_workflow_parallelism_bounds_pods_across_the_whole_workflow(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    doc = workflow(dag("main", *(task(f"t{i}", "sleep") for i in range(4))), python("sleep", journal_code(journal, 0.3)),
                   parallelism=1)

    assert execute(doc, tmp_path).phase == "Succeeded"
    assert most_at_once(intervals(journal)) == 1


def test_steps_run_groups_in_order_and_steps_of_a_group_together(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    doc = workflow(
        {"name": "main", "steps": [
            [task("first", "say", args={"text": "one"})],
            [task("left", "sleep"), task("right", "echo", args={"text": "{{steps.first.outputs.result}}"})],
        ], "outputs": {"parameters": [{"name": "echoed", "valueFrom": {"parameter": "{{steps.right.outputs.result}}"}}]}},
        python("say", "print('{{inputs.parameters.text}}')", inputs=["text"]),
        python("echo", "print('got {{inputs.parameters.text}}')", inputs=["text"]),
        python("sleep", journal_code(journal, 0.2)),
    )

    result = execute(doc, tmp_path)

    assert result.phase == "Succeeded"
    assert result.outputs == {"echoed": "got one"}
    assert result.task("left").started >= result.task("first").finished


@pytest.mark.parametrize("depends, runs, workflow_phase", [
    ("ok && bad.Failed", True, "Succeeded"),  # the failure was handled: the branch ends well
    ("ok.Succeeded && !bad.Succeeded", True, "Succeeded"),
    ("(bad || ok) && bad.Failed", True, "Succeeded"),
    ("bad", False, "Failed"),  # omitted below a failure: the branch failed
    ("bad.Errored || skipped.Succeeded", False, "Failed"),
    ("skipped.Skipped && ok", True, "Failed"),  # `bad` is still a leaf that failed
])
def test_depends_decides_with_argo_task_results(tmp_path, depends, runs, workflow_phase):
    doc = workflow(
        dag("main", task("ok", "pass"), task("bad", "fail"), task("skipped", "pass", when="a == b"),
            task("probe", "pass", depends=depends)),
        python("pass", "pass"), python("fail", "raise SystemExit(3)"),
    )

    result = execute(doc, tmp_path)

    assert result.task("probe").phase == ("Succeeded" if runs else "Omitted")
    assert result.phase == workflow_phase


def test_continue_on_failed_lets_dependents_run_and_the_workflow_succeed(tmp_path):
    doc = workflow(dag("main", task("bad", "fail", continueOn={"failed": True}),
                       task("next", "pass", dependencies=["bad"])),
                   python("pass", "pass"), python("fail", "raise SystemExit(1)"))

    result = execute(doc, tmp_path)

    assert result.phase == "Succeeded"
    assert result.task("next").phase == "Succeeded"


def test_with_items_expands_items_and_maps(tmp_path):
    doc = workflow(dag("main", task("each", "echo", withItems=[{"env": "staging", "n": 1}, {"env": "prod", "n": 2}],
                                    args={"text": "{{item.env}}-{{item.n}}"})),
                   python("echo", "print('{{inputs.parameters.text}}')", inputs=["text"]))

    result = execute(doc, tmp_path)

    assert [t.outputs.get("result") for t in result.tasks if t.type == "Pod"] == ["staging-1", "prod-2"]
    assert result.task("each").type == "TaskGroup"


def test_workflow_task_and_item_variables_resolve(tmp_path):
    report = "print('{{workflow.name}}|{{workflow.namespace}}|{{workflow.uid}}|{{inputs.parameters.a}}|{{inputs.parameters.b}}')"
    doc = workflow(
        dag("main", task("first", "say", args={"text": "hi"}),
            task("second", "report", depends="first", withItems=["x"],
                 args={"a": "{{tasks.first.status}}:{{tasks.first.outputs.result}}", "b": "{{item}}"})),
        python("say", "print('{{inputs.parameters.text}}')", inputs=["text"]),
        python("report", report, inputs=["a", "b"]))

    result = execute(doc, tmp_path, namespace="ml")

    name, namespace, uid, a, b = result.task("second(0:x)").outputs["result"].split("|")
    assert (name, namespace, a, b) == (result.run_id, "ml", "Succeeded:hi", "x")
    assert len(uid) == 36


def test_a_dag_template_called_as_a_task_passes_its_outputs_up(tmp_path):
    inner = dag("inner", task("say", "say", args={"text": "{{inputs.parameters.word}}"}),
                inputs={"parameters": [{"name": "word"}]},
                outputs={"parameters": [{"name": "said", "valueFrom": {"parameter": "{{tasks.say.outputs.result}}"}}]})
    outer = dag("main", task("nested", "inner", args={"word": "deep"}),
                outputs={"parameters": [{"name": "out", "valueFrom": {"parameter": "{{tasks.nested.outputs.parameters.said}}"}}]})
    doc = workflow(outer, inner, python("say", "print('{{inputs.parameters.text}}')", inputs=["text"]))

    result = execute(doc, tmp_path)

    assert result.outputs == {"out": "deep"}
    assert result.task("nested").type == "DAG" and result.task("nested.say").phase == "Succeeded"


def test_a_cron_workflow_runs_its_workflow_spec_once(tmp_path):
    spec = workflow(python("main", "print('tick')"))["spec"]
    cron = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow", "metadata": {"name": "reconcile"},
            "spec": {"schedules": ["*/15 * * * *"], "concurrencyPolicy": "Forbid", "workflowSpec": spec}}

    result = execute(cron, tmp_path)

    assert result.run_id.startswith("reconcile-") and result.task("main").outputs["result"] == "tick"


# -- retries and deadlines --------------------------------------------------------------------

def counter_code(counter: Path, fail_times: int, exit_code: int = 1) -> str:
    return (f"import pathlib,sys; p=pathlib.Path({str(counter)!r}); n=int(p.read_text() or 0) if p.exists() else 0; "
            f"p.write_text(str(n+1)); print('attempt', n+1); sys.exit({exit_code} if n < {fail_times} else 0)")


def test_retry_strategy_retries_a_failing_step_until_it_succeeds(tmp_path):
    counter = tmp_path / "count"
    doc = workflow(dag("main", task("flaky", "flaky")), python("flaky", counter_code(counter, 2), retryStrategy={
        "limit": "3", "retryPolicy": "OnFailure", "backoff": {"duration": "2s", "factor": "2", "maxDuration": "1m"}}))

    events = []
    result = execute(doc, tmp_path, on_event=events.append)

    assert result.phase == "Succeeded"
    assert counter.read_text() == "3"
    assert result.task("flaky").attempts == 3
    assert [e.attempt for e in events if e.phase == "Running"] == [0, 1, 2]
    assert "attempt 1" in Path(result.task("flaky").log).read_text()


@pytest.mark.parametrize("strategy, exit_code, attempts", [
    ({"limit": 3, "retryPolicy": "OnError"}, 1, 1),  # a non-zero exit is Failed, not Error
    ({"limit": 1}, 1, 2),  # default policy OnFailure; limit counts retries, not attempts
    ({"limit": 3, "expression": "asInt(lastRetry.exitCode) == 75"}, 2, 1),
    ({"limit": 3, "expression": "asInt(lastRetry.exitCode) == 75"}, 75, 3),
])
def test_retry_policy_and_expression_decide_what_is_retried(tmp_path, strategy, exit_code, attempts):
    counter = tmp_path / "count"
    doc = workflow(python("main", counter_code(counter, 2, exit_code), retryStrategy=strategy))

    result = execute(doc, tmp_path)

    assert counter.read_text() == str(attempts)
    assert result.phase == ("Succeeded" if attempts == 3 else "Failed")


def test_backoff_grows_by_factor_is_capped_and_respects_max_duration():
    failed = Outcome("Failed", exit_code=1)
    strategy = {"limit": 10, "backoff": {"duration": "1s", "factor": 2, "cap": "5s", "maxDuration": "1m"}}
    waits = [next_retry(strategy, n, failed, 0.1, 0.0, 1.0).wait for n in (1, 2, 3, 4)]
    assert waits == [1.0, 2.0, 4.0, 5.0]
    assert next_retry(strategy, 1, failed, 0.1, 0.0, 61.0).reason == "Max duration limit exceeded"
    assert next_retry({"limit": 2}, 3, failed, 0.1, 0.0, 1.0).reason == "No more retries left"


def test_active_deadline_kills_a_sleeping_step(tmp_path):
    pid_file = tmp_path / "pid"
    doc = workflow(python("main", f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); "
                                  "time.sleep(30)", activeDeadlineSeconds=1))

    started = time.monotonic()
    result = execute(doc, tmp_path)

    assert time.monotonic() - started < 10
    assert result.phase == "Failed"
    assert "deadline exceeded" in result.message
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_workflow_deadline_stops_everything(tmp_path):
    doc = workflow(dag("main", task("slow", "sleep"), task("later", "sleep", depends="slow")),
                   python("sleep", "import time; time.sleep(30)"), python("report", "print('{{workflow.status}}')"),
                   activeDeadlineSeconds=1, onExit="report")

    result = execute(doc, tmp_path)

    assert result.phase == "Failed"
    assert result.message == "deadline exceeded (workflow activeDeadlineSeconds 1)"
    assert [t.name for t in result.tasks] == ["slow", "onExit"]  # `later` never started
    assert result.task("onExit").outputs["result"] == "Failed"  # the exit handler runs past the deadline


def test_stopping_the_executor_stops_its_steps(tmp_path):
    pid_file = tmp_path / "pid"
    doc = workflow(python("main", f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); time.sleep(30)"))
    driver = (f"from mlferry.engine import load, run; run(load({doc!r}), run_dir={str(tmp_path / 'run')!r}, "
              f"lock_dir={str(tmp_path / 'locks')!r}, kill_grace=0.5)")
    executor = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and executor.poll() is None
        time.sleep(0.05)

    executor.terminate()
    executor.wait(timeout=10)

    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    record = load_run(tmp_path, "run")
    assert (record.phase, record.message) == ("Failed", "interrupted")


# -- synchronization --------------------------------------------------------------------------

def test_runs_holding_the_same_mutex_do_not_overlap(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    v4 = workflow(dag("main", task("commit", "commit")),
                  python("commit", journal_code(journal, 0.4), synchronization={"mutexes": [{"name": "gitops"}]}))
    v3 = workflow(dag("main", task("commit", "commit")),
                  python("commit", journal_code(journal, 0.4), synchronization={"mutex": {"name": "gitops"}}))
    results = []
    threads = [threading.Thread(target=lambda doc=doc: results.append(execute(doc, tmp_path))) for doc in (v4, v3, v4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert [r.phase for r in results] == ["Succeeded"] * 3
    spans = intervals(journal)
    assert len(spans) == 3 and most_at_once(spans) == 1


def test_a_semaphore_lets_its_configured_number_through(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    doc = workflow(dag("main", *(task(f"t{i}", "work") for i in range(4))),
                   python("work", journal_code(journal, 0.3), synchronization={
                       "semaphores": [{"configMapKeyRef": {"name": "limits", "key": "work"}}]}))

    result = execute(doc, tmp_path, cluster=Cluster(config_maps={"limits": {"work": "2"}}))

    assert result.phase == "Succeeded"
    assert most_at_once(intervals(journal)) == 2


# -- parameters, environment, exit handler, references ---------------------------------------

def test_parameters_are_checked_before_anything_runs(tmp_path):
    doc = workflow(python("main", "pass"), arguments={"parameters": [
        {"name": "model"}, {"name": "env", "value": "staging", "enum": ["staging", "production"]}]})

    with pytest.raises(ArgumentError, match="parameter 'model' is required"):
        execute(doc, tmp_path)
    with pytest.raises(ArgumentError, match="'qa' is not one of staging, production"):
        execute(doc, tmp_path, {"model": "m", "env": "qa"})
    with pytest.raises(ArgumentError, match="unknown parameter 'modle'"):
        execute(doc, tmp_path, {"modle": "m"})
    assert not list((tmp_path / "runs").glob("*/logs"))


def test_env_comes_from_config_maps_and_secrets_and_missing_keys_stop_the_run_early(tmp_path):
    code = "import os; print(os.environ['URI'], os.environ['TOKEN'], os.environ['CFG_mode'], os.environ.get('OPT'))"
    doc = workflow(python("main", code))
    doc["spec"]["templates"][0]["container"].update(
        env=[{"name": "URI", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "uri"}}},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
             {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}}}],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}])
    cluster = Cluster(config_maps={"settings": {"uri": "http://mlflow", "mode": "local"}},
                      secrets={"creds": {"token": "s3cr3t"}})

    result = execute(doc, tmp_path, cluster=cluster)

    assert result.task("main").outputs["result"] == "http://mlflow s3cr3t local None"
    with pytest.raises(ArgumentError, match="couldn't find key token in Secret default/creds"):
        execute(doc, tmp_path, cluster=Cluster(config_maps=cluster.config_maps, secrets={"creds": {}}))


def test_local_mode_reads_secrets_from_the_environment(tmp_path):
    doc = workflow(python("main", "import os; print(os.environ['TOKEN'])"))
    doc["spec"]["templates"][0]["container"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "any-secret", "key": "MY_TOKEN"}}}]

    result = execute(doc, tmp_path, env={**os.environ, "MY_TOKEN": "from-env"})

    assert result.task("main").outputs["result"] == "from-env"
    with pytest.raises(ArgumentError, match="MY_TOKEN is not set"):
        execute(doc, tmp_path, env={"PATH": os.environ["PATH"]})


def test_a_secret_reaches_only_the_pods_whose_template_asks_for_it(tmp_path):
    asks = python("asks", "import os; print(os.environ.get('MY_TOKEN'))")
    asks["container"]["env"] = [{"name": "MY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "MY_TOKEN"}}}]
    forgot = python("forgot", "import os; print(os.environ.get('MY_TOKEN'))")
    doc = workflow({"name": "main", "dag": {"tasks": [{"name": "asks", "template": "asks"},
                                                       {"name": "forgot", "template": "forgot"}]}}, asks, forgot)

    result = execute(doc, tmp_path, env={**os.environ, "MY_TOKEN": "from-env"})

    # On a cluster a pod without the secretKeyRef has no such variable; locally the same.
    assert result.task("asks").outputs["result"] == "from-env"
    assert result.task("forgot").outputs["result"] == "None"


def test_exit_handler_runs_after_a_failure_and_sees_the_status(tmp_path):
    doc = workflow(python("main", "raise SystemExit(2)"),
                   python("report", "print('{{workflow.status}}', '{{workflow.name}}'.startswith('t-'))"),
                   onExit="report")

    result = execute(doc, tmp_path)

    assert result.phase == "Failed"
    assert result.task("onExit").outputs["result"] == "Failed True"


def test_a_workflow_runs_its_referenced_workflow_template_with_its_own_arguments(tmp_path):
    template = workflow(python("main", "print('{{workflow.parameters.env}}')"),
                        arguments={"parameters": [{"name": "env", "value": "staging"}]})
    template["metadata"]["name"] = "mlferry-promote"
    submitted = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                 "metadata": {"generateName": "promote-"},
                 "spec": {"workflowTemplateRef": {"name": "mlferry-promote"},
                          "arguments": {"parameters": [{"name": "env", "value": "production"}]}}}

    result = execute(submitted, tmp_path, workflow_templates=[template])

    assert result.run_id.startswith("promote-")
    assert result.task("main").outputs["result"] == "production"
    assert [r.run_id for r in list_runs(tmp_path / "runs")] == [result.run_id]


# -- load-time refusals -----------------------------------------------------------------------

def refusal(doc) -> str:
    with pytest.raises(PlanError) as err:
        load(doc)
    return str(err.value)


def test_a_misspelt_field_is_refused_at_load_with_its_path():
    doc = workflow(python("main", "pass"))
    doc["spec"]["templates"][0]["contaner"] = doc["spec"]["templates"][0].pop("container")

    message = refusal(doc)

    assert "spec.templates[main].contaner: not supported" in message
    assert "did you mean 'container'?" in message


@pytest.mark.parametrize("change, expected", [
    (lambda t: t[0]["dag"]["tasks"][1].update(depends="a && ghost"),
     "spec.templates[main].dag.tasks[b]: depends on 'ghost', which is not a task of this DAG"),
    (lambda t: t[0]["dag"]["tasks"][0].update(template="nowhere"),
     "spec.templates[main].dag.tasks[a].template: no template named 'nowhere'"),
    (lambda t: t[0]["dag"]["tasks"][1].update(arguments={"parameters": [{"name": "x", "value": "{{tasks.b.outputs.result}}"}]}),
     "{{tasks.b.outputs.result}} refers to nothing in scope"),
    (lambda t: t[1]["container"]["args"].append("{{inputs.parameters.nope}}"),
     "spec.templates[work].container.args[0]: {{inputs.parameters.nope}} refers to nothing in scope"),
    (lambda t: t[0]["dag"]["tasks"][1].update(depends="a.Completed"),
     "unknown task result a.Completed"),
    (lambda t: t[0]["dag"]["tasks"][0].update(depends="b"), "dependency cycle"),
    (lambda t: t[1].update(outputs={"artifacts": [{"name": "model", "path": "/tmp/m"}]}),
     "spec.templates[work].outputs.artifacts: not supported"),
    (lambda t: t[0]["dag"]["tasks"][0].update(hooks={"exit": {"template": "work"}}),
     "spec.templates[main].dag.tasks[a].hooks: not supported"),
    (lambda t: t[1].update(podSpecPatch="{}"), "spec.templates[work].podSpecPatch: not supported"),
    (lambda t: t[0]["dag"]["tasks"][0].update(when="{{=sprig.trim(inputs.parameters.x)}} == a"),
     "unsupported expression"),
    (lambda t: t[1].update(outputs={"parameters": [{"name": "o", "valueFrom": {"path": "/etc/o"}}]}),
     "is outside the outputs directory"),
])
def test_what_cannot_run_locally_is_refused_at_load_naming_it(change, expected):
    templates = [dag("main", task("a", "work"), task("b", "work", depends="a")),
                 {"name": "work", "container": {"image": "python:3.11", "command": ["python"], "args": []}}]
    change(templates)

    assert expected in refusal(workflow(*templates))


def test_fields_with_no_local_effect_are_accepted():
    doc = workflow(python("main", "pass", nodeSelector={"pool": "cpu"}, metadata={"labels": {"a": "b"}}),
                   podGC={"strategy": "OnPodSuccess"}, ttlStrategy={"secondsAfterCompletion": 60},
                   serviceAccountName="mlferry", workflowMetadata={"labels": {"x": "y"}})
    doc["spec"]["templates"][0]["container"].update(resources={"limits": {"memory": "1Gi"}}, imagePullPolicy="Always")

    assert load(doc).entrypoint == "main"


# -- the small languages ----------------------------------------------------------------------

def test_when_conditions_follow_govaluate():
    assert evaluate_when("heads == heads")
    assert evaluate_when("'a b' != a && 5 > 3")
    assert evaluate_when("(1 == 2) || !(x == y)")
    assert not evaluate_when("5 == '5'")
    with pytest.raises(ExpressionError, match="wrapping"):
        evaluate_when("my-model == my-model")


def test_depends_expressions_combine_task_results():
    d = parse_depends("(a || b.Failed) && !c.Skipped")
    assert d.tasks == ("a", "b", "c")
    assert d.predicate({"a": frozenset({"Skipped"}), "c": frozenset({"Succeeded"})})
    assert not d.predicate({"a": frozenset({"Omitted"}), "b": frozenset({"Succeeded"}), "c": frozenset({"Succeeded"})})
    assert parse_depends("fan.AnySucceeded").predicate({"fan": frozenset({"Failed", "AnySucceeded"})})


def test_expressions_in_tags_use_the_supported_subset():
    scope = {"inputs.parameters.n": "3", "inputs.parameters.my-env": "prod"}
    assert substitute("{{=asInt(inputs.parameters.n) > 2 ? 'big' : 'small'}}", scope) == "big"
    assert substitute("{{=inputs.parameters['my-env'] == 'prod'}}", scope) == "true"
    assert substitute("{{ inputs.parameters.n }}/{{tasks.later.outputs.result}}", scope) == "3/{{tasks.later.outputs.result}}"


def test_run_records_can_be_listed_and_read_back(tmp_path):
    result = execute(workflow(python("main", "print('hello')")), tmp_path)

    [listed] = list_runs(tmp_path / "runs")
    again = load_run(tmp_path / "runs", result.run_id)
    assert listed.run_id == again.run_id == result.run_id
    assert again.phase == "Succeeded" and again.task("main").outputs["result"] == "hello"
    assert Path(again.task("main").log).read_text() == "hello\n"
    with pytest.raises(LookupError):
        load_run(tmp_path / "runs", "no-such-run")


def test_python_runs_in_the_executors_interpreter(tmp_path):
    result = execute(workflow(python("main", "import sys; print(sys.executable)")), tmp_path)
    assert result.task("main").outputs["result"] == sys.executable

"""What Argo Workflows does, the local engine does: each test states Argo's behaviour, with the
upstream source it comes from, and runs a workflow written for that behaviour (not Argo's
example file) through the engine or through `mlferry submit` as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlferry.engine import ArgumentError, PlanError, load
from tests.test_executor import execute, python, workflow

REPO = Path(__file__).resolve().parents[1]


def shell(name: str, script: str, **extra) -> dict:
    return {"name": name, "container": {"image": "alpine", "command": ["sh", "-c", script]}, **extra}


# -- 1. the entrypoint is called with the workflow's arguments (operator.go: executeTemplate(…,
#       woc.execWf.Spec.Arguments, …)); so is onExit (WorkflowSpec.GetExitHook(args)) -----------

def test_the_entrypoint_and_the_exit_handler_get_the_workflows_arguments(tmp_path):
    main = python("main", "print('{{inputs.parameters.message}}', '{{inputs.parameters.shout}}')",
                  inputs=("message",))
    main["inputs"]["parameters"].append({"name": "shout", "value": "quietly"})  # the argument wins
    bye = python("bye", "print('bye {{inputs.parameters.message}}')", inputs=("message",))
    doc = workflow(main, bye, onExit="bye",
                   arguments={"parameters": [{"name": "message", "value": "hello"}, {"name": "shout", "value": "LOUD"}]})

    result = execute(doc, tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result.task("main").outputs["result"] == "hello LOUD"
    assert result.task("onExit").outputs["result"] == "bye hello"

    given = execute(doc, tmp_path, {"message": "from submit"})
    assert given.task("main").outputs["result"] == "from submit LOUD"


def test_an_entrypoint_input_the_workflow_does_not_supply_fails_the_submission(tmp_path):
    """validate.go runs ProcessArgs on the entrypoint with spec.arguments: `argo submit` refuses."""
    doc = workflow(python("main", "print('{{inputs.parameters.other}}')", inputs=("other",)),
                   arguments={"parameters": [{"name": "message", "value": "hello"}]})
    with pytest.raises(ArgumentError) as err:
        execute(doc, tmp_path)
    assert "templates.main.inputs.parameters.other was not supplied" in str(err.value)
    assert not list((tmp_path / "runs").glob("*/run.json")), "a refused submission leaves no run"


# -- 2. a script's source file is executable (executor.go, StageFiles: mode 0o755) ------------

def test_a_script_file_can_be_run_by_its_path(tmp_path):
    doc = workflow({"name": "main", "script": {"image": "alpine", "command": ["sh", "-c"],
                                              "source": "#!/bin/sh\necho ran as $0"}})
    result = execute(doc, tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result.task("main").outputs["result"].startswith("ran as /") and result.task("main").outputs["result"].endswith("/script")


# -- 3. a command that cannot start fails the step (emissary.go: exec.LookPath, exit code 64; the
#       e2e test invalid_command_test.go expects phase Failed, "executable file not found") -----

@pytest.mark.parametrize("command, words", [
    ("mlferry-no-such-command", 'exec: "mlferry-no-such-command": executable file not found in $PATH'),
    ("/nonexistent/run-me", 'exec: "/nonexistent/run-me": stat /nonexistent/run-me: no such file or directory'),
])
def test_a_command_that_cannot_start_fails_as_on_argo(tmp_path, command, words):
    doc = workflow({"name": "main", "container": {"image": "alpine", "command": [command]}})
    result = execute(doc, tmp_path)
    assert result.phase == "Failed"
    assert words in result.message
    assert result.task("main").phase == "Failed" and result.task("main").outputs["exitCode"] == "64"


def test_a_file_that_is_not_executable_cannot_start(tmp_path):
    target = tmp_path / "plain.txt"
    target.write_text("echo no\n")
    doc = workflow({"name": "main", "container": {"image": "alpine", "command": [str(target)]}})
    result = execute(doc, tmp_path)
    assert result.phase == "Failed"
    assert f'exec: "{target}": permission denied' in result.message


def test_the_command_is_looked_up_on_the_containers_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "mlferry-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    doc = workflow({"name": "main", "container": {
        "image": "alpine", "command": ["mlferry-test-tool"],
        "env": [{"name": "PATH", "value": f"{bin_dir}:/usr/bin:/bin"}]}})
    result = execute(doc, tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result.task("main").outputs["result"] == "tool ran"


# -- 4. the step ends when its main process exits (emissary.go waits on the process, not on its
#       output; the container's other processes die with it) ----------------------------------

def test_a_background_child_does_not_keep_the_step_running(tmp_path):
    marker = tmp_path / "child-still-alive"
    script = f"(sleep 3; touch {marker}) & echo main done"
    doc = workflow(shell("main", script, activeDeadlineSeconds=60))
    started = time.monotonic()
    result = execute(doc, tmp_path)
    took = time.monotonic() - started
    assert result.phase == "Succeeded", result.message
    assert result.task("main").outputs["result"] == "main done"
    assert took < 2.5, f"the step waited {took:.1f}s for its background child"
    time.sleep(3.5)
    assert not marker.exists(), "the background child outlived its container"


# -- 5. `retryStrategy: {}` retries without limit (operator.go, processNodeRetries: the limit
#       is checked only when set; RetryPolicyActual defaults to OnFailure) --------------------

def test_an_empty_retry_strategy_retries_until_the_step_succeeds(tmp_path):
    counter = tmp_path / "attempts"
    code = (f"import pathlib,sys; p=pathlib.Path({str(counter)!r}); n=int(p.read_text()) if p.exists() else 0; "
            "p.write_text(str(n+1)); sys.exit(0 if n >= 3 else 1)")
    result = execute(workflow(python("main", code, retryStrategy={})), tmp_path)
    assert result.phase == "Succeeded", result.message
    assert counter.read_text() == "4"
    assert result.task("main").attempts == 4


def test_an_empty_retry_strategy_does_not_retry_an_error(tmp_path):
    """OnFailure, the default policy, retries Failed nodes, not Errored ones (a missing output)."""
    doc = workflow(python("main", "print('x')", retryStrategy={},
                          outputs={"parameters": [{"name": "o", "valueFrom": {"path": "/tmp/hera-outputs/o"}}]}))
    result = execute(doc, tmp_path)
    assert result.phase == "Error"
    assert result.task("main").attempts == 1


# -- 6. a fanned-out node's output parameter, by name, is the list of its succeeded items' values
#       (operator.go, processAggregateNodeOutputs, aggregatedJSONValueList) -------------------

def _producer() -> dict:
    """Writes its input to its output parameter `out`; the input `fail` fails the step."""
    template = python("produce", "import os,pathlib; v='{{inputs.parameters.v}}'; p=pathlib.Path(os.environ['OUT']); "
                                 "p.parent.mkdir(parents=True, exist_ok=True); p.write_text(v); "
                                 "raise SystemExit(1 if v=='fail' else 0)",
                      inputs=("v",),
                      outputs={"parameters": [{"name": "out", "valueFrom": {"path": "/tmp/hera-outputs/out"}}]})
    template["container"]["env"] = [{"name": "OUT", "value": "{{outputs.parameters.out.path}}"}]
    return template


@pytest.mark.parametrize("values, expected", [
    (["a", "b", "c"], ["a", "b", "c"]),
    (['{"k":1}', '{"k":2}'], [{"k": 1}, {"k": 2}]),  # JSON maps and lists are kept as JSON
    (['{"k":1}', "plain"], ['{"k":1}', "plain"]),  # else every value stays a string
    (["a", "fail", "c"], ["a", "c"]),  # only the items that succeeded
])
def test_a_fanned_out_steps_output_by_name_is_the_list_of_its_items_values(tmp_path, values, expected):
    consume = python("consume", "import sys; print(sys.argv[1])", inputs=("all",))
    consume["container"]["command"].append("{{inputs.parameters.all}}")
    main = {"name": "main", "steps": [
        [{"name": "gen", "template": "produce", "withItems": values,
          "arguments": {"parameters": [{"name": "v", "value": "{{item}}"}]}, "continueOn": {"failed": True}}],
        [{"name": "use", "template": "consume",
          "arguments": {"parameters": [{"name": "all", "value": "{{steps.gen.outputs.parameters.out}}"}]}}]]}
    result = execute(workflow(main, _producer(), consume), tmp_path)
    assert result.task("use").phase == "Succeeded", result.message
    assert json.loads(result.task("use").outputs["result"]) == expected


def test_a_fanned_out_tasks_output_by_name_in_a_dag(tmp_path):
    consume = python("consume", "import sys; print(sys.argv[1])", inputs=("all",))
    consume["container"]["command"].append("{{inputs.parameters.all}}")
    main = {"name": "main", "dag": {"tasks": [
        {"name": "gen", "template": "produce", "withItems": [1, 2],
         "arguments": {"parameters": [{"name": "v", "value": "{{item}}"}]}},
        {"name": "use", "template": "consume", "depends": "gen",
         "arguments": {"parameters": [{"name": "all", "value": "{{tasks.gen.outputs.parameters.out}}"}]}}]}}
    result = execute(workflow(main, _producer(), consume), tmp_path)
    assert result.phase == "Succeeded", result.message
    assert result.task("use").outputs["result"] == '["1","2"]'


def test_a_multi_document_file_is_refused_saying_what_to_do(tmp_path):
    one = workflow(python("main", "print(1)"))
    two = {**workflow(python("main", "print(2)")), "metadata": {"name": "second"}}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump_all([one, two]))
    with pytest.raises(PlanError) as err:
        load(path)
    text = str(err.value)
    assert "2 documents" in text and "WorkflowTemplate/t" in text and "WorkflowTemplate/second" in text
    assert "one file per workflow" in text


def test_mlferry_submit_runs_a_workflow_with_arguments_from_another_folder(tmp_path):
    """As a Hera user without a cluster would: a Workflow file, `mlferry submit FILE -p`, from
    another folder, nothing exported."""
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "hello-"},
           "spec": {"entrypoint": "say", "arguments": {"parameters": [{"name": "message", "value": "hi"}]},
                    "templates": [{"name": "say", "inputs": {"parameters": [{"name": "message"}]},
                                   "script": {"image": "alpine", "command": ["sh"],
                                              "source": "echo {{inputs.parameters.message}}"}}]}}
    (tmp_path / "hello.yaml").write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "MLFERRY_"))}
    done = subprocess.run([sys.executable, "-m", "mlferry.cli", "submit", "hello.yaml", "-p", "message=from the cli"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Succeeded" in done.stdout
    record = next((tmp_path / ".mlferry" / "runs").glob("hello-*/run.json"))
    assert json.loads(record.read_text())["tasks"][0]["outputs"]["result"] == "from the cli"


# -- what the engine refuses, it refuses with Argo's meaning; the README says all of it --------

@pytest.mark.parametrize("where, field, value, words", [
    ("template", "memoize", {"key": "k", "maxAge": "1h", "cache": {"configMap": {"name": "c"}}},
     "spec.templates[main].memoize: not supported by the local executor (on a cluster, Argo reuses cached outputs"),
    ("template", "suspend", {}, "spec.templates[main].suspend: not supported by the local executor (on a cluster, Argo pauses"),
    ("spec", "volumes", [], "spec.volumes: not supported by the local executor (on a cluster, Argo mounts"),
    ("container", "workingDir", "/app", "spec.templates[main].container.workingDir: not supported by the local "
                                        "executor (on a cluster, Argo starts the command in this folder)"),
])
def test_a_refused_feature_says_what_argo_would_do(where, field, value, words):
    doc = workflow(python("main", "print(1)"))
    target = {"template": doc["spec"]["templates"][0], "spec": doc["spec"],
              "container": doc["spec"]["templates"][0]["container"]}[where]
    target[field] = value
    with pytest.raises(PlanError) as err:
        load(doc)
    assert words in str(err.value)


def test_the_readme_table_is_the_engines_own():
    from mlferry.engine.fields import feature_table

    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- engine-features:begin -->\n", "\n<!-- engine-features:end -->"
    assert begin in readme and end in readme, "the README lost its table of engine features"
    assert readme.split(begin, 1)[1].split(end, 1)[0] == feature_table(), \
        "README.md's engine table is stale: paste mlferry.engine.fields.feature_table()"

"""engine.scope: the names the loader allows are the keys of the values the executor gives."""

from __future__ import annotations

from mlferry.engine.expressions import argo_string, render_value
from mlferry.engine.nodes import Outcome
from mlferry.engine.scope import TASKS, item_vars, node_names, node_vars

LEAF = {"name": "work", "script": {"command": ["python"], "source": "pass"},
        "outputs": {"parameters": [{"name": "o", "valueFrom": {"path": "/tmp/hera-outputs/o"}}]}}
DAG = {"name": "inner", "dag": {"tasks": []},
       "outputs": {"parameters": [{"name": "o", "valueFrom": {"parameter": "x"}}]}}


def test_a_finished_node_gives_only_names_the_loader_allows():
    ran = Outcome("Succeeded", outputs={"o": "1"}, result="out", exit_code=0, node_id="n")
    fanned = Outcome("Succeeded", children=(ran, Outcome("Skipped")))
    for target, outcome, expanded in [(LEAF, ran, False), (LEAF, fanned, True), (DAG, Outcome("Succeeded",
                                      outputs={"o": "1"}), False), (DAG, fanned, True)]:
        given = node_vars(TASKS, "a", outcome, leaf="script" in target)
        assert set(given) <= set(node_names(TASKS, "a", target, expanded=expanded)), (target["name"], expanded)


def test_a_fanned_out_script_offers_its_results_as_a_json_list():
    children = (Outcome("Succeeded", result='{"k": 1}'), Outcome("Succeeded", result="plain"))
    given = node_vars(TASKS, "a", Outcome("Succeeded", children=children), leaf=True)
    assert given["tasks.a.outputs.result"] == '[{"k":1},"plain"]'


def test_values_become_strings_as_argo_writes_them():
    assert [argo_string(v) for v in (True, 3, 2.0, 2.5, "x", {"a": [1, "é"]})] == \
        ["true", "3", "2", "2.5", "x", '{"a":[1,"é"]}']
    assert render_value(False) == "false"
    assert item_vars({"n": 1, "flag": False}) == {"item": '{"n":1,"flag":false}', "item.n": "1", "item.flag": "false"}

"""Tables line up on a terminal whatever the names: wide (CJK, emoji) characters take two
columns, combining marks none, and over-long cells are cut with an ellipsis."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from mlferry.fleet import FleetStatus, Row
from mlferry.history import DEPLOY, FolderEvent, ModelHistory
from mlferry.table import fit, format_table, width

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
CJK = "葡萄酒品質モデル"
LONG = "a-very-long-model-name-" + "x" * 57  # 80 characters
assert len(LONG) == 80


def column_starts(line: str) -> list[int]:
    """The display column where each cell of a table line starts (cells are two spaces apart)."""
    return [width(line[:m.start(1)]) for m in re.finditer(r"(?:^|  +)(\S(?:\S| (?! ))*)", line)]


def assert_aligned(table: str, columns: int) -> None:
    lines = [line for line in table.splitlines() if line]
    starts = [column_starts(line) for line in lines]
    assert all(len(s) == columns for s in starts), table
    assert all(s == starts[0] for s in starts), table


def test_width_counts_terminal_columns():
    assert width("wine") == 4
    assert width(CJK) == 16
    assert width("🍷") == 2
    assert width("café") == width("cafe\u0301") == 4  # a combining accent takes no column
    assert fit(CJK, 7) == "葡萄酒…"  # a wide character is never cut in half
    assert width(fit(LONG, 48)) == 48 and fit(LONG, 48).endswith("…")


def _row(model: str, env: str, version: str) -> Row:
    event = FolderEvent(folder=f"teams/ml/m/{env}", kind=DEPLOY, version=version, trigger="manual", training_run="r",
                        commit="0123456789abcdef", when=NOW - timedelta(minutes=5), author="a", subject="s")
    return Row(model=model, env=env, folder=f"teams/ml/m/{env}", registry_version=version,
               selected_by=(("alias", env),), git_version=version, in_git=True, published=True, last=event)


def test_status_table_stays_aligned_with_cjk_emoji_and_long_names():
    status = FleetStatus(registry="http://mlflow", repo="repo", branch="main", head="abc", bucket="b", team="ml",
                         env="", rows=[_row("wine", "production", "1"), _row(CJK, "staging", "2"),
                                       _row("🍷-quality", "production", "3"), _row(LONG, "production", "4")])
    table = status.table(NOW)
    body = table.splitlines()[1:6]  # header and the four rows
    assert_aligned("\n".join(body), 8)
    assert "…" in body[4] and LONG not in table  # cut in the table…
    assert status.as_json(NOW)["rows"][3]["model"] == LONG  # …whole in --json


def test_history_table_stays_aligned_with_wide_authors_and_triggers():
    events = [FolderEvent(folder=f"teams/ml/m/{env}", kind=DEPLOY, version="1", trigger=trigger, training_run="run-1",
                          commit="0123456789abcdef", when=NOW - timedelta(hours=1), author=author, subject="s",
                          workflow=f"mlferry-promote-{author}")
              for env, trigger, author in (("production", "manual", "ann"), ("staging", "手動", "山田太郎"),
                                           ("production", LONG, "🍷 bot"))]
    table = ModelHistory(model=CJK, env="", repo="repo", branch="main", head="abc", events=events).table(NOW)
    assert_aligned("\n".join(table.splitlines()[1:]), 9)


def test_format_table_cuts_every_cell_to_the_column_maximum():
    table = format_table(["NAME", "X"], [[LONG, "1"], [CJK * 4, "2"]], cell_max=20)
    assert_aligned(table, 2)
    assert max(width(line) for line in table.splitlines()) <= 20 + 2 + 1


def test_status_table_shows_what_runs_only_when_a_status_source_is_configured():
    from dataclasses import replace

    from mlferry.steps.deploy_status import DeployStatus

    rows = [replace(_row("wine", "production", "1"), deployed=DeployStatus("a1b2c3d4e5f6a7b8", "Synced", "Healthy")),
            replace(_row(CJK, "staging", "2"), deployed=DeployStatus("", "OutOfSync", "Missing", "no such folder"))]
    status = FleetStatus(registry="http://mlflow", repo="repo", branch="main", head="abc", bucket="b", team="ml",
                         env="", rows=rows, source="local")
    table = status.table(NOW)
    assert_aligned("\n".join(table.splitlines()[1:4]), 10)
    assert "DEPLOYED" in table and "a1b2c3d4e5" in table and "Missing OutOfSync" in table
    assert "not running (local):" in table and "no such folder" in table
    assert status.as_json(NOW)["rows"][0]["deployed"]["health"] == "Healthy"
    unsourced = replace(status, source="", rows=[replace(r, deployed=None) for r in rows])
    assert "DEPLOYED" not in unsourced.table(NOW) and unsourced.as_json(NOW)["rows"][0]["deployed"] is None

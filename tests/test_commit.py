"""The commit step against real git: bare remotes on disk, and a token-checking smart-HTTP server."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from mlferry.steps import gitops
from mlferry.steps.gitops import runner
from mlferry.steps.commit import (
    Commit,
    CommitInput,
    CommitRefused,
    commit,
    commit_folder,
    commit_message,
)
from mlferry.steps.naming import slugify
from mlferry.steps.retire import retirement
from mlferry.steps.trailers import parse_trailer_value, trailer_value

FAST = gitops.RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
FOLDER = "teams/ml/demo/staging"
OUTSIDE = {"README.md": "# gitops\n", "teams/ml/other/staging/kustomization.yaml": "resources: []\n"}
TOKEN = "tok-3f9c2a7e51d04b8b"


# --- helpers ---------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None, check: bool = True, input_text: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "human", "GIT_AUTHOR_EMAIL": "h@example.org",
           "GIT_COMMITTER_NAME": "human", "GIT_COMMITTER_EMAIL": "h@example.org", "LC_ALL": "C"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          input=input_text)
    if check and done.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def make_remote(root: Path, files: dict[str, str] | None = None, *, filters: bool = True) -> Path:
    """A bare repo; with files, one initial commit on main holding them. ``filters``: the
    server allows blobless clones (as GitHub and GitLab do); without, git clones in full."""
    remote = root / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    git("--git-dir", str(remote), "config", "uploadpack.allowFilter", str(filters).lower())
    if files:
        write_from_clone(remote, files, root / "seed", "seed")
    return remote


def write_from_clone(remote: Path, files: dict[str, str], clone: Path, message: str) -> str:
    """Another writer: clone (or pull), write files, commit, push; returns its sha."""
    if not clone.exists():
        git("clone", "--quiet", str(remote), str(clone))
        git("checkout", "--quiet", "-B", "main", cwd=clone)
    else:
        git("pull", "--quiet", "origin", "main", cwd=clone)
    for name, content in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(content)
    git("add", "-A", cwd=clone)
    git("commit", "--quiet", "-m", message, cwd=clone)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


def log(remote: Path) -> list[str]:
    out = git("--git-dir", str(remote), "log", "--format=%H", "main", check=False)
    return out.splitlines()


def tree(remote: Path, ref: str = "main") -> dict[str, str]:
    """path → content of every file on ref."""
    paths = [p for p in git("--git-dir", str(remote), "ls-tree", "-r", "-z", "--name-only", ref).split("\0") if p]
    return {p: git("--git-dir", str(remote), "show", f"{ref}:{p}") + "\n" for p in paths}


def trailers(remote: Path, sha: str) -> dict[str, str]:
    out = git("--git-dir", str(remote), "log", "-1", "--format=%(trailers:only,unfold)", sha)
    pairs = (line.split(": ", 1) for line in out.splitlines() if line)
    return {key: parse_trailer_value(value) for key, value in pairs}


def promotion(version: str = "3", files: dict[str, str] | None = None, **extra) -> CommitInput:
    files = files if files is not None else {
        "kustomization.yaml": "resources:\n- deployment.yaml\n",
        "deployment.yaml": f"kind: Deployment\nversion: {version}\n",
    }
    values = dict(model="demo", version=version, env="staging", folder=FOLDER, files=files,
                  run_id="run-1", trigger="webhook")
    return CommitInput(**{**values, **extra})


def in_folder(remote: Path) -> dict[str, str]:
    return {p.removeprefix(FOLDER + "/"): c for p, c in tree(remote).items() if p.startswith(FOLDER + "/")}


def blobs_in(clone: Path) -> set[str]:
    """Ids of the file contents a clone holds (fetched or written), without fetching any."""
    out = git("cat-file", "--batch-all-objects", "--batch-check=%(objecttype) %(objectname)", cwd=clone)
    return {sha for kind, sha in (line.split() for line in out.splitlines()) if kind == "blob"}


def blob_ids(files: dict[str, str]) -> set[str]:
    return {git("hash-object", "--stdin", input_text=content) for content in files.values()}


@pytest.fixture(params=[True, False], ids=["server-filters", "server-refuses-filters"])
def filters(request) -> bool:
    """Every remote test runs against a server that allows blobless clones and one that does not."""
    return request.param


@pytest.fixture
def remote(tmp_path: Path, filters: bool) -> Path:
    return make_remote(tmp_path, OUTSIDE, filters=filters)


# --- promote, idempotence, replace, remove -------------------------------------------------------


def test_first_promote_creates_the_folder_with_the_files_and_trailers(remote: Path) -> None:
    result = commit_folder(promotion(), str(remote), "main")

    assert result == Commit(sha=log(remote)[0], changed=True, folder=FOLDER, branch="main", repo=str(remote))
    assert in_folder(remote) == {"deployment.yaml": "kind: Deployment\nversion: 3\n",
                                 "kustomization.yaml": "resources:\n- deployment.yaml\n"}
    assert trailers(remote, result.sha) == {"Model": "demo", "Version": "3", "Environment": "staging",
                                            "Training-Run": "run-1", "Trigger": "webhook"}
    subject = git("--git-dir", str(remote), "log", "-1", "--format=%s|%an <%ae>|%cn <%ce>", "main")
    assert subject == ("promote demo v3 to staging|mlferry <mlferry@users.noreply.local>"
                       "|mlferry <mlferry@users.noreply.local>")


def test_an_identical_second_call_commits_nothing_and_reports_the_head(remote: Path) -> None:
    initial = len(log(remote))
    first = commit_folder(promotion(), str(remote), "main")
    second = commit_folder(promotion(), str(remote), "main")

    assert (second.changed, second.sha) == (False, first.sha)
    assert len(log(remote)) == initial + 1


def test_a_new_version_replaces_the_files_and_drops_the_old_ones(remote: Path) -> None:
    first = commit_folder(promotion("3", {"kustomization.yaml": "a\n", "old.yaml": "old\n"}), str(remote), "main")
    second = commit_folder(promotion("4", {"kustomization.yaml": "b\n", "new.yaml": "new\n"}), str(remote), "main")

    assert second.changed and second.sha != first.sha
    assert log(remote)[:2] == [second.sha, first.sha]
    assert in_folder(remote) == {"kustomization.yaml": "b\n", "new.yaml": "new\n"}
    assert trailers(remote, second.sha)["Version"] == "4"


def test_files_outside_the_folder_are_untouched(remote: Path) -> None:
    before = git("--git-dir", str(remote), "ls-tree", "-r", "main")
    commit_folder(promotion(), str(remote), "main")
    commit_folder(promotion(remove=True, files={}), str(remote), "main")

    assert git("--git-dir", str(remote), "ls-tree", "-r", "main") == before
    assert {p: c for p, c in tree(remote).items()} == OUTSIDE


def test_remove_deletes_the_folder_and_is_idempotent(remote: Path) -> None:
    commit_folder(promotion(), str(remote), "main")
    removed = commit_folder(promotion(version="", remove=True, files={}), str(remote), "main")
    again = commit_folder(promotion(version="", remove=True, files={}), str(remote), "main")

    assert removed.changed and in_folder(remote) == {}
    assert (again.changed, again.sha) == (False, removed.sha)
    assert git("--git-dir", str(remote), "log", "-1", "--format=%s", "main") == "remove demo from staging"
    assert "Version" not in trailers(remote, removed.sha)
    assert trailers(remote, removed.sha)["Model"] == "demo"


def test_an_empty_remote_gets_the_branch(tmp_path: Path, filters: bool) -> None:
    remote = make_remote(tmp_path, filters=filters)
    result = commit_folder(promotion(), str(remote), "gitops")

    assert result.changed and result.branch == "gitops"
    assert git("--git-dir", str(remote), "rev-parse", "gitops") == result.sha
    assert git("--git-dir", str(remote), "rev-list", "--count", "gitops") == "1"


def test_removing_from_an_empty_remote_changes_nothing(tmp_path: Path, filters: bool) -> None:
    remote = make_remote(tmp_path, filters=filters)
    result = commit_folder(promotion(remove=True, files={}), str(remote), "main")
    assert (result.sha, result.changed) == ("", False)
    assert log(remote) == []


def test_file_urls_work_and_are_reported_as_given(remote: Path) -> None:
    result = commit_folder(promotion(), remote.as_uri(), "main")
    assert result.repo == remote.as_uri() and result.sha == log(remote)[0]


def test_author_comes_from_the_environment_when_set(remote: Path) -> None:
    environ = {"MLFERRY_GIT_AUTHOR_NAME": "Ferry Bot", "MLFERRY_GIT_AUTHOR_EMAIL": "bot@example.org"}
    commit_folder(promotion(), str(remote), "main", environ=environ)
    assert git("--git-dir", str(remote), "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main") == (
        "Ferry Bot <bot@example.org>|Ferry Bot <bot@example.org>")


def test_the_clone_is_shallow(remote: Path, tmp_path: Path) -> None:
    write_from_clone(remote, {"README.md": "v2\n"}, tmp_path / "other", "second")
    commit_folder(promotion(), remote.as_uri(), "main", workdir=tmp_path / "work")
    assert git("rev-parse", "--is-shallow-repository", cwd=tmp_path / "work") == "true"


def test_the_clone_fetches_no_file_beside_the_folder_where_the_server_allows(tmp_path: Path) -> None:
    # Outside files, and an older version of the folder that a thin push would delta against.
    remote = make_remote(tmp_path, {**OUTSIDE, f"{FOLDER}/deployment.yaml": "version: 2\n"}, filters=True)
    new = promotion("3")
    commit_folder(new, str(remote), "main", workdir=tmp_path / "work")

    assert blobs_in(tmp_path / "work") == blob_ids(new.files)
    assert in_folder(remote) == new.files and {p: tree(remote)[p] for p in OUTSIDE} == OUTSIDE


def test_a_retry_after_a_race_fetches_no_file_either(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, OUTSIDE, filters=True)
    theirs: list[str] = []

    def other_writer_wins() -> None:
        if not theirs:
            theirs.append(write_from_clone(remote, {"README.md": "edited\n"}, tmp_path / "human", "edit"))

    ours = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work", retry=FAST,
                         before_push=other_writer_wins)

    assert ours.changed and log(remote)[:2] == [ours.sha, theirs[0]]
    assert blobs_in(tmp_path / "work") == blob_ids(promotion().files)
    assert tree(remote)["README.md"] == "edited\n"


def test_a_race_to_create_the_branch_refetches_blobless_too(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, filters=True)  # no branch yet: our first attempt starts from nothing
    theirs: list[str] = []

    def other_writer_creates_it() -> None:
        if not theirs:
            theirs.append(write_from_clone(remote, OUTSIDE, tmp_path / "human", "first"))

    ours = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work", retry=FAST,
                         before_push=other_writer_creates_it)

    assert log(remote) == [ours.sha, theirs[0]] and tree(remote)["README.md"] == OUTSIDE["README.md"]
    assert blobs_in(tmp_path / "work") == blob_ids(promotion().files)


def objects_in(clone: Path) -> set[str]:
    """Ids of every object a clone holds, without fetching any."""
    out = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)", cwd=clone)
    return set(out.splitlines())


def tree_id(remote: Path, path: str) -> str:
    return git("--git-dir", str(remote), "rev-parse", f"main:{path}")


BESIDE = {"README.md": "# gitops\n",
          "teams/ml/demo/production/deployment.yaml": "kind: Deployment\nversion: 1\n",
          "teams/ml/other/staging/deployment.yaml": "kind: Deployment\nversion: 7\n"}


def test_the_clone_holds_only_the_trees_above_the_folder(tmp_path: Path) -> None:
    # The folder's siblings (production beside staging) and other models' folders are neither
    # cloned nor fetched later (the push must not fetch what it does not send).
    remote = make_remote(tmp_path, {**BESIDE, f"{FOLDER}/deployment.yaml": "version: 2\n"}, filters=True)
    siblings = {tree_id(remote, p) for p in ("teams/ml/demo/production", "teams/ml/other/staging", FOLDER)}
    above = {tree_id(remote, p) for p in ("teams", "teams/ml", "teams/ml/demo")}

    result = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work")

    held = objects_in(tmp_path / "work")
    assert result.changed and in_folder(remote) == promotion().files
    assert above <= held and not siblings & held
    assert {p: tree(remote)[p] for p in BESIDE} == BESIDE


def test_a_server_serving_only_blobless_clones_gets_one(tmp_path: Path, caplog) -> None:
    # A server serving tree:0 but no deeper tree filter (GitHub has said it does): the step
    # falls back to every tree and no file.
    remote = make_remote(tmp_path, {**BESIDE, f"{FOLDER}/deployment.yaml": "version: 2\n"}, filters=True)
    git("--git-dir", str(remote), "config", "uploadpackfilter.tree.maxDepth", "0")
    with caplog.at_level(logging.INFO, logger="mlferry.steps.gitops"):
        result = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work")

    assert result.changed and in_folder(remote) == promotion().files
    assert tree_id(remote, "teams/ml/other/staging") in objects_in(tmp_path / "work")  # every tree...
    assert blobs_in(tmp_path / "work") == blob_ids(promotion().files)  # ...and no file but ours
    assert "does not serve combine:tree:4+blob:none" in caplog.text and "trying blob:none" in caplog.text


@pytest.mark.parametrize("server", ["deep-tree-filters", "blobless-only", "no-filters"])
def test_the_folder_is_read_from_the_commits_own_clone(tmp_path: Path, server: str) -> None:
    # The commit step asks who owns the folder (and whether it is held) from the clone it commits
    # in, at the head it builds on: only the folder's own files are fetched for it, whatever filter
    # the server serves, and nothing beside it.
    before = {"deployment.yaml": "kind: Deployment\nversion: 2\n", "kustomization.yaml": "resources: []\n"}
    remote = make_remote(tmp_path, {**BESIDE, **{f"{FOLDER}/{name}": text for name, text in before.items()}},
                         filters=server != "no-filters")
    if server == "blobless-only":
        git("--git-dir", str(remote), "config", "uploadpackfilter.tree.maxDepth", "0")
    head = log(remote)[0]
    seen = []

    def check(base: str, folders) -> str:
        seen.append((base, {folder: dict(files) for folder, files in folders.items()}))
        return ""

    result = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work", check=check)

    assert result.changed and in_folder(remote) == promotion().files and result.blocked == ""
    assert seen == [(head, {FOLDER: before})]
    if server != "no-filters":
        assert blobs_in(tmp_path / "work") == blob_ids(before) | blob_ids(promotion().files)
    if server == "deep-tree-filters":
        siblings = {tree_id(remote, p) for p in ("teams/ml/demo/production", "teams/ml/other/staging")}
        assert not siblings & objects_in(tmp_path / "work")


def test_a_check_that_says_no_keeps_the_commit_out(remote: Path) -> None:
    first = commit_folder(promotion("2"), str(remote), "main", retry=FAST)
    asked = []

    def held(base: str, folders) -> str:
        asked.append(dict(folders[FOLDER]))
        return "held for the audit"

    result = commit_folder(promotion("3"), str(remote), "main", retry=FAST, check=held)

    assert (result.changed, result.blocked, result.sha) == (False, "held for the audit", first.sha)
    assert asked == [promotion("2").files] and in_folder(remote) == promotion("2").files
    absent = commit_folder(promotion("3", env="production", folder="teams/ml/demo/production"), str(remote), "main",
                           retry=FAST, check=lambda base, folders: asked.append(dict(folders)) or "")
    assert absent.changed and asked[-1] == {"teams/ml/demo/production": {}}


def test_the_git_adapter_takes_any_file_name_literally(tmp_path: Path) -> None:
    # The commit step allows plain names only; the adapter beneath it must not depend on that.
    remote = make_remote(tmp_path, OUTSIDE)
    odd = {'a "quoted" name.yaml': "x: 1\n", "back\\slash.yaml": "x: 2\n", "ünïcode.yaml": "x: 3\n",
           "sub/dir.yaml": "x: 4\n", "new\nline.yaml": "x: 5\n"}
    gitops.publish_folder(str(remote), "main", gitops.FolderChange.single(FOLDER, odd, "odd names"))
    names = git("--git-dir", str(remote), "-c", "core.quotePath=false", "ls-tree", "-r", "-z", "--name-only",
                "main", "--", FOLDER).split("\0")
    assert sorted(n.removeprefix(FOLDER + "/") for n in names if n) == sorted(odd)
    assert in_folder(remote) == odd


def test_a_server_refusing_filters_gets_a_full_clone_and_the_log_says_why(tmp_path: Path, caplog) -> None:
    remote = make_remote(tmp_path, OUTSIDE, filters=False)
    with caplog.at_level(logging.INFO, logger="mlferry.steps.gitops"):
        result = commit_folder(promotion(), str(remote), "main", workdir=tmp_path / "work")

    assert result.changed and in_folder(remote) == promotion().files
    assert blob_ids(OUTSIDE) <= blobs_in(tmp_path / "work")
    assert "set uploadpack.allowFilter" in caplog.text


def test_long_transfers_log_git_progress(remote: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL", 0.0)  # every transfer counts as long
    with caplog.at_level(logging.INFO, logger="mlferry.steps.gitops"):
        commit_folder(promotion(), str(remote), "main")
    assert any("objects" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


# --- races ---------------------------------------------------------------------------------------


def test_a_writer_that_pushes_first_keeps_its_commit_and_ours_lands_on_top(remote: Path, tmp_path: Path) -> None:
    theirs: list[str] = []

    def other_writer_wins() -> None:
        if not theirs:
            theirs.append(write_from_clone(remote, {"README.md": "edited by a human\n"}, tmp_path / "human", "edit"))

    ours = commit_folder(promotion(), str(remote), "main", retry=FAST, before_push=other_writer_wins)

    assert ours.changed
    assert log(remote)[:2] == [ours.sha, theirs[0]]
    assert git("--git-dir", str(remote), "rev-parse", f"{ours.sha}^") == theirs[0]
    assert tree(remote)["README.md"] == "edited by a human\n"
    assert in_folder(remote)["kustomization.yaml"] == "resources:\n- deployment.yaml\n"


def test_a_writer_that_pushes_the_same_content_first_leaves_nothing_to_commit(remote: Path) -> None:
    theirs: list[Commit] = []

    def same_promotion_wins() -> None:
        if not theirs:
            theirs.append(commit_folder(promotion(run_id="other-run"), str(remote), "main"))

    initial = len(log(remote))
    ours = commit_folder(promotion(), str(remote), "main", retry=FAST, before_push=same_promotion_wins)

    assert (ours.changed, ours.sha) == (False, theirs[0].sha)
    assert len(log(remote)) == initial + 1


def test_concurrent_identical_promotions_commit_once(remote: Path) -> None:
    both_ready = threading.Barrier(2, timeout=30)
    results: list[Commit] = []
    errors: list[BaseException] = []

    def promote() -> None:
        pushed_once = []

        def wait_for_the_other() -> None:  # both reach the push together: a real race
            if not pushed_once:
                pushed_once.append(True)
                both_ready.wait()

        try:
            results.append(commit_folder(promotion(), str(remote), "main", retry=FAST,
                                         before_push=wait_for_the_other))
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    initial = len(log(remote))
    threads = [threading.Thread(target=promote) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert len(log(remote)) == initial + 1
    assert {r.sha for r in results} == {log(remote)[0]}
    assert sorted(r.changed for r in results) in ([False, True], [True, True])  # same sha: both "pushed"


def test_concurrent_promotions_of_different_models_all_land(remote: Path) -> None:
    models = ["alpha", "beta", "gamma"]
    start = threading.Barrier(len(models), timeout=30)
    results: dict[str, Commit] = {}

    def promote(model: str) -> None:
        start.wait()
        folder = f"teams/ml/{model}/staging"
        results[model] = commit_folder(promotion(model=model, folder=folder), str(remote), "main", retry=FAST)

    threads = [threading.Thread(target=promote, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(results) == models and all(r.changed for r in results.values())
    assert {r.sha for r in results.values()} == set(log(remote)[:3])
    assert {p.split("/")[2] for p in tree(remote) if p.startswith("teams/ml/")} == {"other", *models}


def test_a_remote_that_keeps_moving_fails_after_bounded_retries(remote: Path, tmp_path: Path) -> None:
    pushes = []

    def always_lose() -> None:
        pushes.append(write_from_clone(remote, {"README.md": f"edit {len(pushes)}\n"}, tmp_path / "h", "edit"))

    with pytest.raises(gitops.GitOpsError, match=r"gave up after 3 attempts.*moved while we pushed"):
        commit_folder(promotion(), str(remote), "main", before_push=always_lose,
                      retry=gitops.RetryPolicy(attempts=3, base_delay=0.01))
    assert len(pushes) == 3 and log(remote)[0] == pushes[-1]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [
    "teams/ml/../x", "teams/ml/demo/../staging", "other/x/y/z", "/teams/ml/demo/staging",
    "teams/ml/demo/staging/", "teams/ml/demo", "teams/ml/demo/staging/extra", "./teams/ml/demo/staging",
    "teams/ML/demo/staging", "",
])
def test_folders_mlferry_does_not_own_are_refused(remote: Path, folder: str) -> None:
    before = log(remote)
    with pytest.raises(CommitRefused):
        commit_folder(promotion(folder=folder), str(remote), "main")
    assert log(remote) == before


def test_a_folder_of_another_model_or_environment_is_refused(remote: Path) -> None:
    with pytest.raises(CommitRefused, match="environment"):
        commit_folder(promotion(folder="teams/ml/demo/production"), str(remote), "main")
    with pytest.raises(CommitRefused, match="does not belong to model"):
        commit_folder(promotion(model="Demo"), str(remote), "main")


@pytest.mark.parametrize("name", [
    "a/b.yaml", "../x.yaml", "..", ".", ".hidden", ".gitattributes", "", "x\n.yaml", "a..b",
    "sub\\x.yaml", "-rf", " lead.yaml", "kustomization.yaml/",
])
def test_bad_file_names_are_refused(remote: Path, name: str) -> None:
    before = log(remote)
    with pytest.raises(CommitRefused, match="not allowed"):
        commit_folder(promotion(files={"kustomization.yaml": "a\n", name: "x"}), str(remote), "main")
    assert log(remote) == before


def test_a_promotion_needs_files_and_a_removal_takes_none(remote: Path) -> None:
    with pytest.raises(CommitRefused, match="no files"):
        commit_folder(promotion(files={}), str(remote), "main")
    with pytest.raises(CommitRefused, match="pass no files"):
        commit_folder(promotion(remove=True), str(remote), "main")
    with pytest.raises(ValueError, match="positive integer"):
        commit_folder(promotion(version="3; rm -rf"), str(remote), "main")


def test_a_file_where_a_parent_folder_should_be_is_reported(tmp_path: Path, filters: bool) -> None:
    remote = make_remote(tmp_path, {"teams/ml/demo": "not a folder\n"}, filters=filters)
    with pytest.raises(gitops.GitOpsError, match="teams/ml/demo is a blob, not a folder"):
        commit_folder(promotion(), str(remote), "main")


@pytest.mark.parametrize("branch", ["-x", "a..b", "main.lock", "feature/", "has space", ""])
def test_bad_branch_names_are_refused(remote: Path, branch: str) -> None:
    with pytest.raises(gitops.GitOpsError, match="not a valid branch name"):
        commit_folder(promotion(), str(remote), branch)


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/x", "ftp://host/x.git"])
def test_dangerous_or_unknown_remotes_are_refused(url: str) -> None:
    with pytest.raises(gitops.GitOpsError):
        commit_folder(promotion(), url, "main", retry=FAST)


# --- the step as Argo runs it ------------------------------------------------------------------------


def test_commit_reads_settings_and_refuses_another_team(remote: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFERRY_GITOPS_REPO", str(remote))
    monkeypatch.setenv("MLFERRY_GITOPS_BRANCH", "main")
    monkeypatch.setenv("MLFERRY_TEAM", "ml")

    assert commit(promotion()).sha == log(remote)[0]
    with pytest.raises(CommitRefused, match="team 'other'"):
        commit(promotion(folder="teams/other/demo/staging"))


def test_hera_runner_calls_the_step_unchanged(remote: Path, tmp_path: Path) -> None:
    args = tmp_path / "args.json"
    inputs = promotion().model_dump()
    args.write_text(json.dumps([{"name": k, "value": v if isinstance(v, str) else json.dumps(v)}
                                for k, v in inputs.items()]))
    env = {**os.environ, "MLFERRY_GITOPS_REPO": str(remote), "MLFERRY_TEAM": "ml",
           "hera__outputs_directory": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "-m", "hera.workflows.runner", "-e", "mlferry.steps.commit:commit", str(args)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    outputs = tmp_path / "out" / "parameters"
    assert (outputs / "sha").read_text() == log(remote)[0]
    assert (outputs / "changed").read_text() == "true"
    assert (outputs / "repo").read_text() == str(remote)


# --- commit messages -------------------------------------------------------------------------------


@given(st.text())
def test_trailer_values_are_one_line_and_reversible(text: str) -> None:
    value = trailer_value(text)
    assert len(value.splitlines()) <= 1 and value == value.strip()
    assert parse_trailer_value(value) == text


@pytest.mark.parametrize("model", [
    "fraud\nVersion: 999", "a\r\nTrigger: evil", "x\u2028Model: y", "\"quoted\"", "  padded  ", "Modèle ünicode",
    "# not a comment", "tab\there", "x" * 300,
])
def test_odd_model_names_cannot_break_the_message(tmp_path: Path, model: str) -> None:
    remote = make_remote(tmp_path)
    folder = f"teams/ml/{slugify(model)}/staging"
    result = commit_folder(promotion(model=model, folder=folder, run_id="r\nWorkflow: forged",
                                     workflow=model, alias=model, delivery_id="d\nModel: other"), str(remote), "main")

    found = trailers(remote, result.sha)
    assert found == {"Model": model, "Version": "3", "Environment": "staging", "Alias": model, "Workflow": model,
                     "Training-Run": "r\nWorkflow: forged", "Trigger": "webhook", "Delivery": "d\nModel: other"}
    subject = git("--git-dir", str(remote), "log", "-1", "--format=%s", "main")
    assert subject.startswith("promote ") and subject.endswith(" v3 to staging") and len(subject) < 100


def test_the_message_has_subject_body_and_trailers() -> None:
    message = commit_message(promotion())
    subject, body, trailer_block = message.rstrip("\n").split("\n\n")
    assert subject == "promote demo v3 to staging"
    assert "teams/ml/demo/staging" in body and "version 3" in body
    assert trailer_block.splitlines() == ["Model: demo", "Version: 3", "Environment: staging",
                                          "Training-Run: run-1", "Trigger: webhook"]


def test_the_trailers_tell_the_workflow_from_the_training_run(remote: Path) -> None:
    """`Run-Id` read as the Argo workflow to many: the workflow and MLflow's run now have names of their own."""
    webhook = promotion(run_id="0f3c9a51d2b84e6f", workflow="mlferry-promote-x7k2p", alias="staging",
                        delivery_id="3f2b6f8e-9a4d")
    promoted = commit_folder(webhook, str(remote), "main")
    assert trailers(remote, promoted.sha) == {
        "Model": "demo", "Version": "3", "Environment": "staging", "Alias": "staging",
        "Workflow": "mlferry-promote-x7k2p", "Training-Run": "0f3c9a51d2b84e6f", "Trigger": "webhook",
        "Delivery": "3f2b6f8e-9a4d"}

    removed = commit_folder(promotion(version="", remove=True, files={}, workflow="mlferry-reconcile-q8w2e",
                                      trigger="schedule"), str(remote), "main")
    assert trailers(remote, removed.sha) == {"Model": "demo", "Environment": "staging",
                                             "Workflow": "mlferry-reconcile-q8w2e", "Training-Run": "run-1",
                                             "Trigger": "schedule"}


def test_a_retirement_names_its_workflow(remote: Path) -> None:
    commit_folder(promotion(), str(remote), "main")
    from mlferry.steps.plan import Deployed

    there = Deployed("demo", "3", "teams/ml/demo/staging")
    change = retirement([("staging", there)], "ml", "webhook", "mlferry-promote-r4t5y")
    published = gitops.publish_folder(str(remote), "main", change)
    assert in_folder(remote) == {}
    assert trailers(remote, published.sha) == {"Workflow": "mlferry-promote-r4t5y", "Trigger": "webhook"}


# --- failures: missing, unreachable, credentials --------------------------------------------------------


def test_a_missing_remote_fails_at_once_with_one_clear_line(tmp_path: Path, caplog) -> None:
    missing = tmp_path / "nowhere.git"
    with caplog.at_level(logging.WARNING, logger="mlferry.steps.gitops"):
        with pytest.raises(gitops.GitOpsError) as raised:
            commit_folder(promotion(), str(missing), "main", retry=FAST)
    message = str(raised.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist or is not a git repository" in message
    assert "MLFERRY_GITOPS_REPO" in message
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_remote_fails_after_bounded_retries(caplog) -> None:
    url = f"https://user:{TOKEN}@127.0.0.1:{free_port()}/team/gitops.git"
    with caplog.at_level(logging.WARNING, logger="mlferry.steps.gitops"):
        with pytest.raises(gitops.GitOpsError) as raised:
            commit_folder(promotion(), url, "main", retry=FAST, environ={"MLFERRY_GIT_TOKEN": TOKEN})
    message = str(raised.value)
    assert "gave up after 5 attempts" in message and "\n" not in message
    assert f"https://127.0.0.1:" in message and "/team/gitops.git" in message
    assert TOKEN not in message and TOKEN not in caplog.text and "user:" not in message
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 4


class GitOverHttp(BaseHTTPRequestHandler):
    """git's smart HTTP (``git http-backend``) behind Basic auth that accepts one token."""

    root: Path
    token: str
    seen_auth: list[str]

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        if not self.authorized(auth):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_USER": "mlferry", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "status":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def authorized(self, auth: str) -> bool:
        if not auth.startswith("Basic "):
            return False
        _, _, password = base64.b64decode(auth.split()[1]).decode().partition(":")
        return password == self.token

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_remote(tmp_path: Path):
    """(url, bare repo, Authorization headers seen) of a token-protected smart-HTTP remote."""
    repo = make_remote(tmp_path, OUTSIDE)
    seen: list[str] = []
    handler = type("Handler", (GitOverHttp,), {"root": tmp_path, "token": TOKEN, "seen_auth": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/remote.git", repo, seen
    server.shutdown()
    server.server_close()


def test_a_token_pushes_over_http_and_stays_out_of_config_argv_and_logs(
    http_remote, tmp_path: Path, caplog, monkeypatch
) -> None:
    url, repo, seen = http_remote
    work = tmp_path / "work"
    argv: list[str] = []
    real_run, real_popen = subprocess.run, subprocess.Popen
    monkeypatch.setattr(runner.subprocess, "run", lambda args, **kw: argv.extend(args) or real_run(args, **kw))
    monkeypatch.setattr(runner.subprocess, "Popen", lambda args, **kw: argv.extend(args) or real_popen(args, **kw))
    with caplog.at_level(logging.DEBUG, logger="steps"):
        result = commit_folder(promotion(), url, "main", workdir=work, environ={"MLFERRY_GIT_TOKEN": TOKEN})
    monkeypatch.undo()

    assert result.changed and result.sha == log(repo)[0] and result.repo == url
    assert blobs_in(work) == blob_ids(promotion().files)  # blobless over http too
    assert any(auth.startswith("Basic ") for auth in seen)
    stored = "".join(p.read_text(errors="replace") for p in (work / ".git").glob("*") if p.is_file())
    assert TOKEN not in stored and base64.b64encode(TOKEN.encode()).decode()[:12] not in stored
    assert TOKEN not in caplog.text
    assert "push" in argv and not any(TOKEN in arg or "Authorization" in arg for arg in argv)


def test_a_token_in_the_url_is_moved_out_of_it(http_remote, tmp_path: Path) -> None:
    url, repo, _ = http_remote
    with_token = url.replace("http://", f"http://bot:{TOKEN}@")
    result = commit_folder(promotion(), with_token, "main", workdir=tmp_path / "work", environ={})

    assert result.repo == url and result.sha == log(repo)[0]
    assert TOKEN not in (tmp_path / "work" / ".git" / "config").read_text()


def test_a_wrong_token_fails_with_an_auth_error_and_pushes_nothing(http_remote) -> None:
    url, repo, _ = http_remote
    before = log(repo)
    with pytest.raises(gitops.GitOpsError) as raised:
        commit_folder(promotion(), url, "main", retry=FAST, environ={"MLFERRY_GIT_TOKEN": "wrong-" + TOKEN})

    message = str(raised.value)
    assert "refused authentication" in message and url in message and "MLFERRY_GIT_TOKEN" in message
    assert TOKEN not in message and "\n" not in message
    assert log(repo) == before


def test_no_token_fails_instead_of_prompting(http_remote) -> None:
    url, repo, _ = http_remote
    with pytest.raises(gitops.GitOpsError, match="refused authentication"):
        commit_folder(promotion(), url, "main", retry=FAST, environ={})


def test_credentials_are_stripped_from_displayed_urls() -> None:
    assert gitops.display_url("https://u:secret@git.example.org:8443/a/b.git") == "https://git.example.org:8443/a/b.git"
    assert gitops.display_url("ssh://git:pw@host:2222/x.git") == "ssh://git@host:2222/x.git"
    assert gitops.display_url("git@github.com:org/repo.git") == "git@github.com:org/repo.git"
    assert gitops.display_url("/srv/git/gitops.git") == "/srv/git/gitops.git"

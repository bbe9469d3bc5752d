"""GitOps history: does a promotion's commit slow down as the GitOps repo grows?

    .venv/bin/python bench/gitops_history.py [--reps 7]

Five bare remotes on local disk, all but the last allowing filtered clones
(``uploadpack.allowFilter``):

- big:   5,000 files under teams/ml/ and 10,000 commits (built in seconds with
         `git fast-import`: one commit adds every file, each later one changes one file, as
         promotions do), then repacked as a maintained server would keep it;
- empty: one initial commit (what `mlferry stack up` creates);
- flat:  the same 5,000 files in a single commit, to tell the size of the tree from the length
         of the history (shown for information);
- big-blobless: a copy of big on a server that serves ``tree:0`` but no deeper tree filter
         (as GitHub has said it does), where the commit step falls back to every tree and no
         file (``blob:none``);
- big-nofilter: a copy of big on a server that refuses filters (``uploadpack.allowFilter``
         unset), where git falls back to fetching every file of the tip (shown for information).

On each, ``steps.commit.commit_folder`` commits one promotion (a freshly rendered folder of a
new version: there is always something to commit), with its default temporary clone, as the
commit step does in its pod; and ``steps.gitops.read_snapshot`` reads every file under
teams/ml/, as reconcile's plan step does. Runs rotate through the remotes; medians compared.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Report, git_commit_count, median, say, scratch_dir, stop_on_sigterm, timed  # noqa: E402

MODELS = 1250
ENVS = ("staging", "production")
FILES = ("deployment.yaml", "kustomization.yaml")  # MODELS × ENVS × FILES = 5,000 files
COMMITS = 10_000
EPOCH = 1_700_000_000
PROMOTED = ("model-0042", "production")


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="commits and snapshot reads per remote (median)")
    args = parser.parse_args()

    from mlferry.stack import init_bare_repo

    report = Report("gitops_history", "GitOps history: one promotion's commit on a big remote vs an empty one")
    with scratch_dir("gitops-history") as tmp:
        tmp = Path(tmp)
        remotes = {"empty": tmp / "empty.git", "big": tmp / "big.git", "flat": tmp / "flat.git",
                   "big-blobless": tmp / "big-blobless.git", "big-nofilter": tmp / "big-nofilter.git"}
        init_bare_repo(remotes["empty"], "main")
        allow_filter(remotes["empty"])  # whatever mlferry.stack does, the baseline allows filters too
        with timed() as building:
            build_remote(remotes["big"], COMMITS)
        with timed() as flat_building:
            build_remote(remotes["flat"], 1)
        shutil.copytree(remotes["big"], remotes["big-blobless"])
        subprocess.run(["git", "-C", str(remotes["big-blobless"]), "config", "uploadpackfilter.tree.maxDepth", "0"],
                       check=True)
        shutil.copytree(remotes["big"], remotes["big-nofilter"])
        subprocess.run(["git", "-C", str(remotes["big-nofilter"]), "config", "uploadpack.allowFilter", "false"],
                       check=True)
        shape = {name: describe(path) for name, path in remotes.items()}
        say(f"built the big remote in {building['seconds']:.1f} s: {shape['big']}")

        commit_times: dict[str, list[float]] = {name: [] for name in remotes}
        snapshot_times: dict[str, list[float]] = {name: [] for name in remotes}
        names = list(remotes)
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order every round
                commit_times[name].append(promote_once(remotes[name], version=str(rep + 2)))
                snapshot_times[name].append(read_once(remotes[name]))
            say(f"round {rep + 1}: commit_folder " + ", ".join(f"{n} {commit_times[n][-1]:.3f} s" for n in names)
                + "; read_snapshot " + ", ".join(f"{n} {snapshot_times[n][-1]:.3f} s" for n in names))

    commit_med = {name: median(times) for name, times in commit_times.items()}
    read_med = {name: median(times) for name, times in snapshot_times.items()}
    ratio = commit_med["big"] / commit_med["empty"]
    report.add(f"commit_folder, one promotion (median of {args.reps}): big vs empty", commit_med["big"],
               commit_med["empty"], ratio, "≤ 2.00x (big/empty)", ratio <= 2.0, unit="s")
    report.add("commit_folder: big vs flat (history length alone)", commit_med["big"], commit_med["flat"],
               commit_med["big"] / commit_med["flat"], "", None, unit="s")
    report.add("commit_folder: big on a server serving only tree:0 (as GitHub) vs empty", commit_med["big-blobless"],
               commit_med["empty"], commit_med["big-blobless"] / commit_med["empty"], "", None, unit="s")
    report.add("commit_folder: big on a server refusing filters vs empty", commit_med["big-nofilter"],
               commit_med["empty"], commit_med["big-nofilter"] / commit_med["empty"], "", None, unit="s")
    report.add(f"read_snapshot of teams/ml/ (median of {args.reps}): big vs empty", read_med["big"],
               read_med["empty"], read_med["big"] / read_med["empty"], "", None, unit="s")
    report.add("read_snapshot: big vs flat (history length alone)", read_med["big"], read_med["flat"],
               read_med["big"] / read_med["flat"], "", None, unit="s")
    report.details = {
        "remotes": shape, "build_seconds": {"big": building["seconds"], "flat": flat_building["seconds"]},
        "commit_folder_seconds": commit_times, "read_snapshot_seconds": snapshot_times,
        "notes": ["baseline column: the empty remote (flat for the rows that say so)",
                  "each commit_folder call clones into a fresh temporary folder (shallow, depth 1, only the "
                  "trees above the folder where the server allows it), commits and pushes, as the commit step "
                  "does in its pod",
                  "read_snapshot clones shallow with file contents (not blobless): it reads every file under "
                  "teams/ml/, i.e. all 5,000"],
    }
    report.finish()
    return 0


def promote_once(remote: Path, version: str) -> float:
    from mlferry.steps.commit import CommitInput, commit_folder
    from mlferry.steps.render import RenderInput, render_folder
    from mlferry.steps.settings import load_settings

    model, env = PROMOTED
    settings = load_settings(environ={"MLFERRY_GITOPS_REPO": str(remote)})
    rendered = render_folder(RenderInput(model=model, version=version, slug=model, env=env), settings)
    inputs = CommitInput(model=model, version=version, env=env, folder=rendered.folder, files=rendered.files,
                         run_id="bench", trigger="bench")
    with timed() as t:
        commit = commit_folder(inputs, str(remote), "main")
    if not commit.changed:
        raise RuntimeError(f"commit_folder committed nothing on {remote}: the bench must change the folder")
    return t["seconds"]


def read_once(remote: Path) -> float:
    from mlferry.steps.gitops import read_snapshot

    with timed() as t:
        snapshot = read_snapshot(str(remote), "main", "teams/ml/")
    if not snapshot.sha:
        raise RuntimeError(f"read_snapshot found no branch on {remote}")
    return t["seconds"]


def build_remote(path: Path, commits: int) -> None:
    """MODELS × ENVS × FILES files in the first commit; each later commit changes one file."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    allow_filter(path)
    importer = subprocess.Popen(["git", "--git-dir", str(path), "fast-import", "--quiet", "--done"],
                                stdin=subprocess.PIPE)
    try:
        write = importer.stdin.write
        paths = [f"teams/ml/model-{m:04d}/{env}/{file}" for m in range(MODELS) for env in ENVS for file in FILES]
        for mark, file_path in enumerate(paths, start=1):
            _data(write, b"blob\nmark :%d\n" % mark, manifest(file_path, 1))
        _commit_header(write, 0, "add 5,000 files")
        for mark, file_path in enumerate(paths, start=1):
            write(f"M 100644 :{mark} {file_path}\n".encode())
        write(b"\n")
        deployments = [p for p in paths if p.endswith("deployment.yaml")]
        for n in range(1, commits):
            file_path = deployments[n % len(deployments)]
            _commit_header(write, n, f"promote {file_path.split('/')[2]} v{n + 1} to {file_path.split('/')[3]}")
            _data(write, f"M 100644 inline {file_path}\n".encode(), manifest(file_path, n + 1))
            write(b"\n")
        write(b"done\n")
        importer.stdin.close()
        if importer.wait() != 0:
            raise RuntimeError(f"git fast-import failed for {path}")
    finally:
        if importer.poll() is None:
            importer.kill()
            importer.wait()
    subprocess.run(["git", "--git-dir", str(path), "repack", "-a", "-d", "-q"], check=True)


def allow_filter(remote: Path) -> None:
    subprocess.run(["git", "-C", str(remote), "config", "uploadpack.allowFilter", "true"], check=True)


def _commit_header(write, n: int, subject: str) -> None:
    write(b"commit refs/heads/main\n")
    write(f"committer mlferry <mlferry@users.noreply.local> {EPOCH + n * 60} +0000\n".encode())
    _data(write, b"", f"{subject}\n\nTrigger: bench\n".encode())


def _data(write, header: bytes, body: bytes) -> None:
    write(header + b"data %d\n" % len(body) + body + b"\n")


def manifest(file_path: str, version: int) -> bytes:
    """About the size and shape of a rendered file (~1 KiB)."""
    _, team, model, env, name = file_path.split("/")
    lines = [f"# {name} for {model} in {env}", "metadata:", f"  name: {model}-{env}", "  annotations:",
             f'    "mlferry.io/model-name": "{model}"', f'    "mlferry.io/version": "{version}"',
             f'    "mlferry.io/environment": "{env}"', "spec:"]
    lines += [f"  line{i:02d}: value {model} {env} {version} {i}" for i in range(30)]
    return ("\n".join(lines) + "\n").encode()


def describe(remote: Path) -> dict[str, int]:
    files = subprocess.run(["git", "--git-dir", str(remote), "ls-tree", "-r", "--name-only", "main"],
                           capture_output=True, text=True, check=True).stdout.count("\n")
    size = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
    return {"commits": git_commit_count(remote), "files": files, "bytes_on_disk": size}


if __name__ == "__main__":
    sys.exit(main())

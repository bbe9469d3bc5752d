"""The source side of a publication: a model version's artifacts, wherever MLflow keeps them.

``open_source(uri)`` understands the URIs MLflow hands out for a version's files:
``mlflow-artifacts:`` (proxied through the tracking server), ``s3://``, ``file:`` and plain
local paths. A source lists its files recursively with their sizes, then fetches one file at
a time onto local disk, streamed, so memory never grows with the model's size.

Every listed path is checked before anything is copied: it must stay inside the model folder
once it becomes an object key or a file name on a serving pod. Local folders are walked
without following links, and a symlink anywhere is refused: it could pull in files from
outside the model (credentials, other models) that the registry never recorded.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tempfile
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from steps.outcome import TransientError, is_transient

REMOTE_SCHEMES = ("mlflow-artifacts", "s3")
LOCAL_SCHEMES = ("file", "")


class SourceError(ValueError):
    """The model's artifacts cannot be published as they are; the message names what and why."""


class TransientSourceError(SourceError, TransientError):
    """The source could not be reached for now (network, 5xx): worth retrying."""


@dataclass(frozen=True, order=True)
class SourceFile:
    path: str  # relative to the model folder, '/'-separated
    size: int


class ModelSource(Protocol):
    uri: str

    def files(self) -> list[SourceFile]: ...

    def fetch(self, path: str) -> AbstractContextManager[Path]: ...


def open_source(uri: str) -> ModelSource:
    scheme = urlsplit(uri).scheme
    if scheme in LOCAL_SCHEMES:
        return LocalSource(uri, local_root(uri))
    if scheme in REMOTE_SCHEMES:
        return RepositorySource(uri)
    raise SourceError(
        f"unknown model source scheme {scheme!r} in {uri!r}; mlferry publishes from "
        "mlflow-artifacts:, s3://, file: or a local path (use MLflow's download URI of the version)"
    )


def check_artifact_path(path: str) -> str:
    """A relative, '/'-separated path that stays inside the model folder, or SourceError."""
    problem = _path_problem(path)
    if problem:
        raise SourceError(f"artifact path {path!r} {problem}; refusing to publish a model whose files "
                          "could land outside its folder")
    return path


def _path_problem(path: str) -> str:
    if not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 32 for c in path):
        return "contains a control character"
    segments = path.split("/")
    if "" in segments:
        return "has an empty segment"
    if any(s in (".", "..") for s in segments):
        return "contains '.' or '..'"
    return ""


# -- local folders ----------------------------------------------------------------------------

def local_root(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file URI {uri!r} names a remote host; mount the folder and use a local path")
        return Path(url2pathname(unquote(parts.path)))
    return Path(uri)


class LocalSource:
    """A model folder on local disk; files are read in place, never copied."""

    def __init__(self, uri: str, root: Path):
        self.uri = uri
        self.root = root

    def files(self) -> list[SourceFile]:
        try:
            mode = os.lstat(self.root).st_mode
        except FileNotFoundError:
            raise SourceError(f"model folder {self.root} does not exist; check the version's source URI") from None
        if stat.S_ISLNK(mode):
            raise SourceError(f"model folder {self.root} is a symlink; publish the real folder instead")
        if not stat.S_ISDIR(mode):
            raise SourceError(f"model source {self.root} is not a folder; point the source URI at the model folder")
        return sorted(self._walk(self.root, ""))

    def _walk(self, folder: Path, rel: str) -> Iterator[SourceFile]:
        with os.scandir(folder) as entries:
            for entry in entries:
                path = check_artifact_path(posixpath.join(rel, entry.name) if rel else entry.name)
                if entry.is_symlink():
                    raise SourceError(f"artifact {path!r} in {self.root} is a symlink; replace it with the "
                                      "file itself (symlinks could publish files from outside the model)")
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path), path)
                elif entry.is_file(follow_symlinks=False):
                    yield SourceFile(path, entry.stat(follow_symlinks=False).st_size)
                else:
                    raise SourceError(f"artifact {path!r} in {self.root} is not a regular file; remove it")

    @contextmanager
    def fetch(self, path: str) -> Iterator[Path]:
        """The file itself; refused if it was swapped (e.g. for a symlink) while in use."""
        file = self.root / check_artifact_path(path)
        before = _identity(file, path)
        yield file
        if _identity(file, path) != before:
            raise SourceError(f"artifact {path!r} changed while it was being published; run the publish again")


def _identity(file: Path, path: str) -> tuple[int, int, int, int]:
    try:
        st = os.lstat(file)
    except FileNotFoundError:
        raise SourceError(f"artifact {path!r} disappeared from {file.parent}; run the publish again") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"artifact {path!r} is no longer a regular file (symlink?); refusing to publish it")
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# -- MLflow artifact repositories -------------------------------------------------------------

class RepositorySource:
    """Artifacts behind one of MLflow's artifact repositories (proxied server or S3)."""

    def __init__(self, uri: str):
        # Imported here: MLflow costs ~130 MB of memory and a second of start-up, which a
        # step publishing from a local folder should not pay.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.uri = uri
        self.repo = get_artifact_repository(uri)

    def files(self) -> list[SourceFile]:
        return sorted(self._walk(""))

    def _walk(self, folder: str) -> Iterator[SourceFile]:
        for info in self._list(folder):
            path = listed_path(info.path, folder, self.uri)
            if info.is_dir:
                yield from self._walk(path)
            elif info.file_size is None:
                raise SourceError(f"the listing of {self.uri} gives no size for {path!r}; cannot verify the copy")
            else:
                yield SourceFile(path, int(info.file_size))

    def _list(self, folder: str) -> list:
        try:
            return self.repo.list_artifacts(folder or None)
        except Exception as err:  # MLflow raises MlflowException, requests or boto errors
            raise _unreachable(err)(f"cannot list the artifacts at {self.uri}{'/' + folder if folder else ''}: "
                              f"{_first_line(err)}; check MLFLOW_TRACKING_URI and that the version exists") from None

    @contextmanager
    def fetch(self, path: str) -> Iterator[Path]:
        """Stream the file into a temporary file that is removed afterwards."""
        check_artifact_path(path)
        with tempfile.TemporaryDirectory(prefix="mlferry-") as tmp:
            local = Path(tmp) / "artifact"
            try:
                self._download(path, local)
            except Exception as err:
                if _disk_full(err):
                    raise SourceError(f"the work disk is full: no space left in {tmp} to stage {path!r}; give "
                                      "the step more disk (a larger volume for TMPDIR) and run again") from None
                raise _unreachable(err)(f"cannot download {path!r} from {self.uri}: {_first_line(err)}; "
                                  "check that the model server or bucket is reachable and run again") from None
            yield local

    def _download(self, path: str, local: Path) -> None:
        # _download_file, not download_artifacts(): no per-file directory probe, no progress bar.
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

        if isinstance(self.repo, HttpArtifactRepository):
            # The proxied GET, streamed in 1 MB chunks. MLflow's own choice, when the server
            # offers ranged downloads, reads 100 MB ranges whole into memory, several at once.
            HttpArtifactRepository._download_file(self.repo, path, str(local))
        else:
            self.repo._download_file(path, str(local))  # S3: boto3's download_file, streamed


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: MLflow and boto3 wrap the OSError in their own errors."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def listed_path(listed: str, folder: str, uri: str) -> str:
    """A listed entry as a path relative to the model folder.

    Repositories return paths relative to their root ('sub/x.bin' when listing 'sub'); some
    prefix them with the URI's last segment ('artifacts/MLmodel' for a URI ending in
    /artifacts). Anything else is refused rather than guessed.
    """
    listed = listed.rstrip("/")
    base = posixpath.basename(urlsplit(uri).path.rstrip("/"))
    expected = f"{folder}/" if folder else ""
    for candidate in (listed, listed[len(base) + 1:] if base and listed.startswith(f"{base}/") else None):
        if candidate is not None and candidate.startswith(expected) and "/" not in candidate[len(expected):]:
            return check_artifact_path(candidate)
    raise SourceError(f"the listing of {uri} returned {listed!r} inside {folder or 'the model folder'!r}; "
                      "refusing a path that leaves the listed folder")


def _unreachable(err: BaseException) -> type[SourceError]:
    return TransientSourceError if is_transient(err) else SourceError


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

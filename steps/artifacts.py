"""The source side of a publication: a model version's artifacts, wherever MLflow keeps them.

``open_source(uri)`` reads ``mlflow-artifacts:``, ``s3://``, ``file:`` and local paths, one
streamed file at a time, so memory never grows with the model. Every path must stay inside the
model folder, and symlinks are refused: they could publish files the registry never recorded.
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
from typing import Iterator, Mapping, Protocol
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from mlferry.steps.outcome import TransientError, is_transient

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
    if scheme == "mlflow-artifacts":
        return ProxiedSource(uri)
    if scheme == "s3":
        return S3Source(uri)
    raise SourceError(
        f"unknown model source scheme {scheme!r} in {uri!r}; mlferry publishes from "
        "mlflow-artifacts:, s3://, file: or a local path (use MLflow's download URI of the version)"
    )


def check_source_allowed(uri: str, tracking_uri: str, allowed: list[str]) -> str:
    """Refuse a source that would take mlferry's credentials somewhere they do not belong.

    MLflow accepts any source for a model version. Read as is, `mlflow-artifacts://other-host/…`
    would receive the MLflow token, and `s3://someone-elses-bucket/…` mlferry's own S3 keys.
    Allowed: the tracking server's own artifact proxy, a local path, and the prefixes the team
    lists in `allowed_sources` (a direct S3 artifact store, say).
    """
    parts = urlsplit(uri)
    if parts.scheme in LOCAL_SCHEMES:
        return uri
    if parts.scheme == "mlflow-artifacts" and parts.netloc in ("", urlsplit(tracking_uri).netloc):
        return uri
    if any(uri == prefix or uri.startswith(prefix.rstrip("/") + "/") for prefix in allowed):
        return uri
    where = (f"another server ({parts.netloc}) than the tracking server" if parts.scheme == "mlflow-artifacts"
             else "a location outside the tracking server's artifact store")
    raise SourceError(f"the model's source {uri} is on {where}; mlferry would send its credentials there, so it "
                      "does not read it: if that store is yours, add its prefix to allowed_sources "
                      "(mlferry.yaml, MLFERRY_ALLOWED_SOURCES)")


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


# -- remote sources: the tracking server's artifact proxy, or S3 ---------------------------

class RemoteSource:
    """Artifacts behind a network API: list them, then stream one file at a time to local disk."""

    uri: str

    def files(self) -> list[SourceFile]:
        try:
            return sorted(self._list())
        except SourceError:
            raise
        except Exception as err:  # requests, urllib3 or botocore errors
            raise _unreachable(err)(f"cannot list the artifacts at {self.uri}: {_first_line(err)}; "
                                    "check MLFLOW_TRACKING_URI and that the version exists") from None

    def _list(self) -> Iterator[SourceFile]:
        raise NotImplementedError

    def _download(self, path: str, local: Path) -> None:
        raise NotImplementedError

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


class ProxiedSource(RemoteSource):
    """`mlflow-artifacts:/<root>`: files served by the tracking server's artifact proxy."""

    def __init__(self, uri: str, environ: Mapping[str, str] | None = None):
        from mlferry.steps.mlflow_api import MlflowApi, tracking_uri

        env = os.environ if environ is None else environ
        parts = urlsplit(uri)
        tracking = urlsplit(tracking_uri(env))
        # `mlflow-artifacts://host:port/...` names its server; otherwise it is the tracking server.
        server = tracking._replace(netloc=parts.netloc) if parts.netloc else tracking
        self.uri, self.root = uri, unquote(parts.path).strip("/")
        self.api = MlflowApi(server.geturl(), env)

    def _list(self) -> Iterator[SourceFile]:
        return self._walk("")

    def _walk(self, folder: str) -> Iterator[SourceFile]:
        for entry in self.api.list_artifacts(self.root, folder):
            path = entry_path(folder, str(entry.get("path", "")), self.uri)
            if entry.get("is_dir"):
                yield from self._walk(path)
            elif entry.get("file_size") is None:
                raise SourceError(f"the listing of {self.uri} gives no size for {path!r}; cannot verify the copy")
            else:
                yield SourceFile(path, int(entry["file_size"]))

    def _download(self, path: str, local: Path) -> None:
        with open(local, "wb") as out:
            for chunk in self.api.download_artifact(self.root, path):
                out.write(chunk)


class S3Source(RemoteSource):
    """`s3://bucket/prefix`: MLflow's artifact store read directly, with the step's S3 settings."""

    def __init__(self, uri: str, environ: Mapping[str, str] | None = None):
        from mlferry.steps.store import ObjectStore

        parts = urlsplit(uri)
        self.uri, self.prefix = uri, parts.path.strip("/") + "/"
        self.store = ObjectStore.from_env(parts.netloc, environ)

    def _list(self) -> Iterator[SourceFile]:
        for key, listed in self.store.objects(self.prefix).items():
            if not key.endswith("/"):  # folder markers some tools write
                yield SourceFile(check_artifact_path(key), listed.size)

    def _download(self, path: str, local: Path) -> None:
        from mlferry.steps.store import TRANSFER

        self.store.client.download_file(self.store.bucket, self.prefix + path, str(local), Config=TRANSFER)


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain: MLflow and boto3 wrap the OSError in their own errors."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def entry_path(folder: str, name: str, uri: str) -> str:
    """A listed entry's path relative to the model folder; the entry must be one plain name."""
    if not name or "/" in name.strip("/") or name.strip("/") in (".", ".."):
        raise SourceError(f"the listing of {uri} returned {name!r} inside {folder or 'the model folder'!r}; "
                          "refusing a name that leaves the listed folder")
    name = name.strip("/")
    return check_artifact_path(f"{folder}/{name}" if folder else name)


def _unreachable(err: BaseException) -> type[SourceError]:
    return TransientSourceError if is_transient(err) else SourceError


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

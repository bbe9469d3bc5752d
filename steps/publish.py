"""Publish: copy a model version's artifacts to ``s3://<bucket>/models/<slug>/<version>/``.

A prefix is complete once ``mlferry-manifest.json`` exists, and immutable from then on, so any
run may be repeated or raced (webhook and schedule): a complete prefix from another source is
refused, an incomplete one is finished and its manifest written last. A complete matching one is
kept object by object, each only if the SHA-256 checksum the store keeps for it (computed from
the bytes it holds) is the one the manifest records: sizes say nothing of a same-size
replacement, and model servers run code from these bytes. Any other object is copied again from
the source, once the source is shown to still hold the published bytes, and a warning says which
and why. Each upload is verified against what the store reports for the bytes it stored (ETag
MD5, or the SHA-256 of a multipart upload's parts' SHA-256s), never against what was sent, so the
copy is never read back.

No ``from __future__ import annotations`` here: Hera's runner inspects ``publish``'s
annotations as classes, and postponed annotations would hand it strings.
"""

import base64
import hashlib
import json
import os
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from hera.workflows import Input, Output
from s3transfer.utils import ChunksizeAdjuster

from mlferry.steps.artifacts import ModelSource, SourceFile, check_artifact_path, check_source_allowed, open_source
from mlferry.steps.mlflow_api import tracking_uri
from mlferry.steps.layout import MANIFEST_NAME, model_prefix
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import load_settings
from mlferry.steps.store import MB, TRANSFER, ListedObject, ObjectStore, PutReceipt, StoredObject

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "mlferry.manifest/v1"
# Per file: the SHA-256 checksum the store keeps for its object, as Digests.checksum; what a
# later run compares each object's against. A key of its own, so v1 readers read on.
CHECKSUM_KEY = "checksum_sha256"
FILES_AT_ONCE = 2  # large files in flight, 4 parts each: more starve the small files' round trips
SMALL_FILES_AT_ONCE = 32  # small files in flight beside them: many small files are latency-bound
HASH_CHUNK = 1 * MB
PROGRESS_FROM = 8 * MB  # a copy of at least this many bytes logs its progress as it goes
PROGRESS_EVERY = 2.0  # seconds between progress lines, at most


class PublishInput(Input):
    model: str
    version: str
    slug: str
    source_uri: str  # MLflow's download URI of the version, e.g. mlflow-artifacts:/1/models/m-…/artifacts


class Publication(Output):
    uri: str  # s3://<bucket>/models/<slug>/<version>/
    files: int
    uploaded: int
    skipped: int
    bytes_uploaded: int
    manifest_sha256: str


class PublishError(RuntimeError):
    """The copy cannot be made or trusted; the message says what and what to do."""


@dataclass(frozen=True)
class PublishedFile:
    """One file as a manifest records it."""
    size: int
    sha256: str  # hex, of the file's bytes
    checksum: str  # the SHA-256 checksum the store keeps for its object (see Digests); "" if not known


@dataclass(frozen=True)
class PublishedManifest:
    """What a complete prefix's manifest says was published."""
    source_uri: str
    files: dict[str, PublishedFile]  # path → file
    model: str = ""  # the registered model it was published for ("" in an old manifest)

    @property
    def sizes(self) -> dict[str, int]:
        return {path: f.size for path, f in self.files.items()}


@dataclass(frozen=True)
class Copied:
    path: str
    size: int
    sha256: str
    checksum: str  # the SHA-256 checksum the store keeps for these bytes (see Digests)
    etag: str  # what the store said about these bytes when they were verified
    uploaded: bool


@dataclass(frozen=True)
class Digests:
    """One read of a file: what the manifest records and what the store must answer."""
    size: int
    sha256: str
    md5: str  # of the whole file; sent as Content-MD5 on a single PUT
    etag: str  # the ETag a store computes for these bytes uploaded the way mlferry uploads them
    # The SHA-256 checksum a store keeps for these bytes uploaded the way mlferry uploads them
    # (base64, as S3 shows it, without the "-<parts>" it adds): the sha256 itself for a single
    # PUT, the SHA-256 of the parts' SHA-256s (a "COMPOSITE" checksum) for a multipart upload.
    checksum: str


@dataclass(frozen=True)
class LargeDigests:
    """One read of a large file, beside its upload: what the manifest records and the checksum
    the store must answer (see Digests)."""
    size: int
    sha256: str
    checksum: str


@as_argo_step
def publish(inputs: PublishInput) -> Publication:
    settings = load_settings()
    check_source_allowed(inputs.source_uri, tracking_uri(os.environ), settings.allowed_sources)
    return publish_version(open_source(inputs.source_uri), publishing_store(settings.bucket),
                           inputs.model, inputs.version, inputs.slug)


def publishing_store(bucket: str) -> ObjectStore:
    """The store with one pooled connection per request copy_files can have in flight, so that
    urllib3 never opens (and drops) extra ones."""
    return ObjectStore.from_env(bucket, connections=FILES_AT_ONCE * TRANSFER.max_concurrency + SMALL_FILES_AT_ONCE + 4)


def publish_version(source: ModelSource, store: ObjectStore, model: str, version: str, slug: str,
                    files_at_once: int = FILES_AT_ONCE) -> Publication:
    prefix = model_prefix(slug, version)  # refuses a slug or version that could escape its folder
    uri = f"s3://{store.bucket}/{prefix}"
    listing = checked_listing(source)  # every path checked before anything is written
    store.check_bucket()
    stored = store.objects(prefix)
    if MANIFEST_NAME in stored:
        return already_published(source, store, prefix, uri, listing, stored, files_at_once, model)

    started = time.monotonic()
    copied = copy_files(source, store, prefix, listing, stored, files_at_once)
    strays = sorted(set(stored) - {f.path for f in listing})
    if strays:
        log.info("removing %d stray object(s) under %s: %s", len(strays), uri, _some(strays))
        store.delete(prefix + path for path in strays)
    check_all_stored(store.objects(prefix), copied, uri)  # nothing lost or replaced since it was verified
    manifest = manifest_bytes(model, version, source.uri, copied)
    manifest_sha256 = hashlib.sha256(manifest).hexdigest()
    store.put_bytes(prefix + MANIFEST_NAME, manifest, manifest_sha256, "application/json")

    sent = sum(c.size for c in copied if c.uploaded)
    publication = Publication(uri=uri, files=len(copied), uploaded=sum(c.uploaded for c in copied),
                              skipped=sum(not c.uploaded for c in copied), bytes_uploaded=sent,
                              manifest_sha256=manifest_sha256)
    seconds = time.monotonic() - started
    log.info("published %s: %d files, %d uploaded (%s), %d already there, in %.1f s (%.1f MB/s)",
             uri, publication.files, publication.uploaded, _size(sent), publication.skipped,
             seconds, _rate(sent, seconds))
    return publication


def checked_listing(source: ModelSource) -> list[SourceFile]:
    """The source's files, all checked before the first byte is written anywhere."""
    listing = source.files()
    for file in listing:
        check_artifact_path(file.path)  # the sources check too; this holds for any source
    if not listing:
        raise PublishError(f"{source.uri} holds no files; check that the model version was logged completely")
    if any(f.path == MANIFEST_NAME for f in listing):
        raise PublishError(f"{source.uri} contains a file named {MANIFEST_NAME}, which mlferry reserves "
                           "for its own manifest; rename it in the model")
    return listing


# -- a prefix that is already complete --------------------------------------------------------

def already_published(source: ModelSource, store: ObjectStore, prefix: str, uri: str, listing: list[SourceFile],
                      stored: Mapping[str, ListedObject], files_at_once: int = FILES_AT_ONCE,
                      model: str = "") -> Publication:
    raw = store.get_bytes(prefix + MANIFEST_NAME)
    manifest = parse_manifest(raw, uri)
    if model and manifest.model and manifest.model != model:
        # Two registered names can share a folder name (`Wine`, `wine-3889e6c049`): the first owns it.
        raise PublishError(f"{uri} belongs to model {manifest.model!r}; model {model!r} maps to the same "
                           "folder name, so it is not deployed: rename one of them")
    differences = source_differences(manifest, source.uri, listing)
    if differences:
        raise PublishError(
            f"{uri} is already published from a different source ({'; '.join(differences)}); a published "
            "version is immutable: register a new model version, or delete the prefix by hand if it is wrong")
    damage = stored_damage(manifest, {path: obj.size for path, obj in stored.items()})
    if damage:
        raise PublishError(
            f"{uri} is marked complete but its objects no longer match its manifest ({'; '.join(damage)}); "
            "it was changed after publishing: delete the whole prefix and publish again")
    manifest_sha256 = hashlib.sha256(raw).hexdigest()
    doubted = unvouched(store, prefix, manifest)
    if not doubted:
        log.info("%s is already published and matches %s (the store's SHA-256 of each object is the "
                 "manifest's); nothing to copy", uri, source.uri)
        return Publication(uri=uri, files=len(listing), uploaded=0, skipped=len(listing), bytes_uploaded=0,
                           manifest_sha256=manifest_sha256)

    started = time.monotonic()
    copied = in_lanes([f for f in listing if f.path in doubted], files_at_once, lambda file, progress: recopy_file(
        source, store, prefix, file, manifest.files[file.path], doubted[file.path], progress))
    uploaded = [c for c in copied if c.uploaded]
    sent = sum(c.size for c in uploaded)
    seconds = time.monotonic() - started
    log.info("repaired %s: %d of %d files copied again (%s) in %.1f s; its manifest stands as it was",
             uri, len(uploaded), len(listing), _size(sent), seconds)
    return Publication(uri=uri, files=len(listing), uploaded=len(uploaded), skipped=len(listing) - len(uploaded),
                       bytes_uploaded=sent, manifest_sha256=manifest_sha256)


def parse_manifest(raw: bytes, uri: str) -> PublishedManifest:
    try:
        manifest = json.loads(raw)
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"unknown format {manifest['format']!r}")
        return PublishedManifest(str(manifest["source_uri"]),
                                 {f["path"]: published_file(f) for f in manifest["files"]},
                                 str(manifest.get("model", "")))
    except (ValueError, KeyError, TypeError) as err:
        raise PublishError(f"{uri}{MANIFEST_NAME} is unreadable ({err}); the prefix is damaged: "
                           "delete it and publish again") from None


def source_differences(manifest: PublishedManifest, source_uri: str, listing: list[SourceFile]) -> list[str]:
    """Why the manifest does not describe this source: [] when it does (paths and sizes)."""
    found = []
    if manifest.source_uri != source_uri:
        found.append(f"manifest source {manifest.source_uri!r}, this run {source_uri!r}")
    published = manifest.sizes
    current = {f.path: f.size for f in listing}
    added = sorted(set(current) - set(published))
    removed = sorted(set(published) - set(current))
    resized = sorted(p for p in set(current) & set(published) if current[p] != published[p])
    for what, paths in (("new files", added), ("files gone", removed), ("sizes changed", resized)):
        if paths:
            found.append(f"{what}: {_some(paths)}")
    return found


def published_file(entry: Mapping) -> PublishedFile:
    """A manifest's file entry. One written before checksums were recorded still vouches for a
    single PUT's (mlferry sent its sha256 along, which the store keeps), not for a multipart one's."""
    size, sha256 = int(entry["size"]), str(entry["sha256"])
    recorded = entry.get(CHECKSUM_KEY)
    checksum = str(recorded) if recorded else ("" if is_multipart(size) else whole_checksum(sha256))
    return PublishedFile(size, sha256, checksum)


def stored_damage(manifest: PublishedManifest, stored: Mapping[str, int]) -> list[str]:
    """How the objects under a complete prefix differ from its manifest, by size only."""
    published = manifest.sizes
    missing = sorted(p for p in published if p not in stored)
    resized = sorted(p for p in published if p in stored and stored[p] != published[p])
    extra = sorted(p for p in stored if p not in published and p != MANIFEST_NAME)
    return [f"{what}: {_some(paths)}" for what, paths in
            (("missing", missing), ("wrong size", resized), ("not in the manifest", extra)) if paths]


def unvouched(store: ObjectStore, prefix: str, manifest: PublishedManifest) -> dict[str, StoredObject | None]:
    """The published files whose objects the store does not vouch for, with what it said of each.

    The store computes an object's SHA-256 checksum from the bytes it holds, so other bytes of
    the same size have another; S3 and MinIO also refuse a PUT whose stated checksum is not its
    body's (moto does not check it). An object without one (written by an older mlferry, or by
    hand) is no evidence either way. One HEAD per object, in parallel; nothing is downloaded.
    """
    paths = sorted(manifest.files)
    with ThreadPoolExecutor(max_workers=max(1, min(SMALL_FILES_AT_ONCE, len(paths))),
                            thread_name_prefix="publish-head") as pool:
        found = dict(zip(paths, pool.map(lambda path: store.head(prefix + path), paths)))
    return {path: obj for path, obj in found.items()
            if obj is None or not manifest.files[path].checksum or obj.sha256 != manifest.files[path].checksum}


def doubt(found: StoredObject | None, published: PublishedFile) -> str:
    """Why an object is not taken for the published file, for the log."""
    if found is None:
        return "it is gone"
    if not found.sha256:
        return ("the store keeps no SHA-256 checksum for it (written by an older mlferry, or by hand), "
                "so nothing vouches for its bytes")
    if not published.checksum:
        return (f"the store's SHA-256 checksum of it is {found.sha256}, not that of the published bytes "
                "(the manifest, from an older mlferry, records none for it)")
    return (f"the store's SHA-256 checksum of it is {found.sha256}, the manifest's {published.checksum}: "
            "its bytes were replaced after publishing")


# -- copying ----------------------------------------------------------------------------------

def copy_files(source: ModelSource, store: ObjectStore, prefix: str, listing: list[SourceFile],
               stored: Mapping[str, ListedObject], files_at_once: int) -> list[Copied]:
    return in_lanes(listing, files_at_once, lambda file, progress: copy_file(
        source, store, prefix, file, stored.get(file.path), progress))


def in_lanes(listing: list[SourceFile], files_at_once: int,
             copy: Callable[[SourceFile, "UploadProgress | None"], Copied]) -> list[Copied]:
    """copy(file, progress) for every file, in parallel; the results sorted by path."""
    # Two lanes: large files (largest first) are bandwidth-bound and hold memory for their parts,
    # small ones are bound by round trips; in one shared pool the large ones would take every
    # slot and the small ones would wait behind them.
    large = sorted((f for f in listing if is_multipart(f.size)), key=lambda f: -f.size)
    small = [f for f in listing if not is_multipart(f.size)]
    total = sum(f.size for f in listing)
    progress = UploadProgress(total) if total >= PROGRESS_FROM else None
    with ThreadPoolExecutor(max_workers=files_at_once, thread_name_prefix="publish-large") as large_pool, \
            ThreadPoolExecutor(max_workers=SMALL_FILES_AT_ONCE, thread_name_prefix="publish-small") as small_pool:
        futures = [pool.submit(copy, f, progress)
                   for pool, files in ((large_pool, large), (small_pool, small)) for f in files]
        try:
            copied = [future.result() for future in futures]
        except BaseException:
            for pool in (large_pool, small_pool):  # stop queued files, let running ones end
                pool.shutdown(wait=True, cancel_futures=True)
            raise
    if progress is not None:
        progress.finish()
    return sorted(copied, key=lambda c: c.path)


def copy_file(source: ModelSource, store: ObjectStore, prefix: str, file: SourceFile,
              stored: ListedObject | None, progress: "UploadProgress | None" = None) -> Copied:
    key = prefix + file.path
    with source.fetch(file.path) as local:
        if stored is not None and (kept := kept_copy(local, file, stored)):
            if progress is not None:
                progress.not_sent(file.size)
            return kept
        started = time.monotonic()
        if is_multipart(file.size):
            digests, etag = upload_while_hashing(store, local, key, file, progress)
        else:
            digests = file_digests(local, None)
            check_read(digests.size, file)
            etag = check_put(store.put_file(local, key, digests.sha256, digests.md5), key, digests)
            if progress is not None:  # a single PUT is small (< multipart_threshold): counted once sent
                progress.sent(digests.size)
        seconds = time.monotonic() - started
    log.info("uploaded %s (%s, %.1f MB/s)", file.path, _size(digests.size), _rate(digests.size, seconds))
    return Copied(file.path, digests.size, digests.sha256, digests.checksum, etag, uploaded=True)


def recopy_file(source: ModelSource, store: ObjectStore, prefix: str, file: SourceFile, published: PublishedFile,
                found: StoredObject | None, progress: "UploadProgress | None" = None) -> Copied:
    """A published file whose object the store does not vouch for, copied again: only once the
    source is shown to hold the published bytes, since the prefix must keep them."""
    key = prefix + file.path
    with source.fetch(file.path) as local:
        # Read whole before anything is sent (not beside the upload, as copy_file does for a large
        # file): bytes the manifest does not describe must not land under a complete prefix.
        digests = file_digests(local, part_size(file.size))
        check_read(digests.size, file)
        if digests.sha256 != published.sha256:
            raise PublishError(
                f"{key} must be copied again ({doubt(found, published)}), but {source.uri} no longer holds the "
                f"published bytes (sha256 {digests.sha256}, the manifest's {published.sha256}); a published version "
                "is immutable: register a new model version, or delete the prefix by hand and publish again")
        if found is not None and found.sha256 == digests.checksum:  # a manifest that recorded no checksum
            log.info("kept %s: the store's SHA-256 checksum of it is that of the source's bytes, which are "
                     "the published ones", file.path)
            if progress is not None:
                progress.not_sent(file.size)
            return Copied(file.path, digests.size, digests.sha256, digests.checksum, found.etag, uploaded=False)
        log.warning("replacing %s under s3://%s/%s: %s; copying it again from %s", file.path, store.bucket, prefix,
                    doubt(found, published), source.uri)
        if is_multipart(file.size):
            store.upload_file(local, key, on_bytes=progress.sent if progress is not None else None)
            etag = check_multipart(store.head(key), key, LargeDigests(digests.size, digests.sha256, digests.checksum),
                                   lambda: digests.etag)
        else:
            etag = check_put(store.put_file(local, key, digests.sha256, digests.md5), key, digests)
            if progress is not None:
                progress.sent(digests.size)
    return Copied(file.path, digests.size, digests.sha256, digests.checksum, etag, uploaded=True)


def kept_copy(local: Path, file: SourceFile, stored: ListedObject) -> Copied | None:
    """An earlier run's object, kept if it holds exactly this file's bytes (its listed ETag)."""
    digests = file_digests(local, part_size(file.size))
    check_read(digests.size, file)
    if stored != ListedObject(digests.size, digests.etag):
        return None
    log.info("kept %s (%s): already uploaded with the same bytes", file.path, _size(digests.size))
    return Copied(file.path, digests.size, digests.sha256, digests.checksum, stored.etag, uploaded=False)


def upload_while_hashing(store: ObjectStore, local: Path, key: str, file: SourceFile,
                         progress: "UploadProgress | None" = None) -> tuple[LargeDigests, str]:
    """A large file's upload starts at once; its digests are computed beside it, from the page
    cache, and the stored object is checked against them when both are done."""
    part = part_size(file.size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-hash") as hasher:
        hashing = hasher.submit(large_file_digests, local, part)
        store.upload_file(local, key, on_bytes=progress.sent if progress is not None else None)
        digests = hashing.result()
    check_read(digests.size, file)
    return digests, check_multipart(store.head(key), key, digests, lambda: file_digests(local, part).etag)


class UploadProgress:
    """Bytes sent of a copy's total, logged at most every PROGRESS_EVERY seconds and once at the end.

    It rides on the reads the upload makes anyway: s3transfer calls ``sent`` from its threads
    with the bytes each read of a part hands to the socket (negative when a retried part is
    rewound), and a single PUT adds its size once stored. The hot path takes no lock: each
    thread adds to a counter only it writes, and the one thread that finds a line due takes
    a non-blocking lock to write it while the others carry on sending.
    """

    def __init__(self, total: int, every: float = PROGRESS_EVERY, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.every = every
        self.clock = clock
        self.started = clock()
        self._due = self.started + every
        self._counters: list[list[int]] = []  # one [bytes] per sending thread
        self._mine = threading.local()
        self._adding = threading.Lock()  # once per thread, and for not_sent: never per chunk
        self._reporting = threading.Lock()

    def sent(self, n: int) -> None:
        counter = getattr(self._mine, "counter", None)
        if counter is None:
            counter = self._mine.counter = [0]
            with self._adding:
                self._counters.append(counter)
        counter[0] += n
        if self.clock() >= self._due and self._reporting.acquire(blocking=False):
            try:
                now = self.clock()
                if now >= self._due:
                    self._due = now + self.every
                    self._log("sent", now)
            finally:
                self._reporting.release()

    def not_sent(self, n: int) -> None:
        """A file an earlier run already stored: it leaves the total."""
        with self._adding:
            self.total -= n

    @property
    def bytes_sent(self) -> int:
        with self._adding:
            counters = list(self._counters)
        return sum(c[0] for c in counters)

    def finish(self) -> None:
        if self.total > 0:
            self._log("sent", self.clock(), final=True)

    def _log(self, verb: str, now: float, final: bool = False) -> None:
        sent, seconds = self.bytes_sent, max(now - self.started, 1e-6)
        rate = sent / seconds
        share = f" ({100 * sent // self.total}%)" if self.total and not final else ""
        log.info("%s %s of %s%s in %.1f s, %.1f MB/s", "upload done:" if final else "uploading:",
                 _size(sent), _size(self.total), share, seconds, rate / MB,
                 extra={"bytes": sent, "total": self.total, "rate": round(rate)})


def check_read(size: int, file: SourceFile) -> None:
    """PublishError if the bytes read are not as many as the source listed."""
    if size != file.size:
        raise PublishError(f"{file.path}: the source listed {file.size} bytes but {size} were read; "
                           "the model changed while publishing, run again")


def is_multipart(size: int) -> bool:
    return size >= TRANSFER.multipart_threshold


def part_size(size: int) -> int | None:
    """The part size s3transfer will cut this file into; None for a single PUT."""
    if not is_multipart(size):
        return None
    return ChunksizeAdjuster().adjust_chunksize(TRANSFER.multipart_chunksize, size)


def file_digests(path: Path, part: int | None) -> Digests:
    """sha256, MD5, the expected ETag and checksum of a file in one read (part: the multipart
    part size, None for a single PUT)."""
    whole, size, md5s, sha256s = hashlib.sha256(), 0, [], []
    for number, chunk in _read_parts(path, part):
        if number == len(md5s):
            md5s.append(hashlib.md5(usedforsecurity=False))
            if part is not None:  # a single PUT's checksum is the whole file's sha256
                sha256s.append(hashlib.sha256())
        whole.update(chunk)
        md5s[number].update(chunk)
        if part is not None:
            sha256s[number].update(chunk)
        size += len(chunk)
    if part is None:
        md5 = (md5s[0] if md5s else hashlib.md5(usedforsecurity=False)).hexdigest()  # an empty file: no chunk
        return Digests(size, whole.hexdigest(), md5, md5, whole_checksum(whole.hexdigest()))
    return Digests(size, whole.hexdigest(), "", multipart_etag([m.digest() for m in md5s]),
                   composite_checksum([h.digest() for h in sha256s]))


def large_file_digests(path: Path, part: int) -> LargeDigests:
    """sha256 and the expected checksum (of the parts' SHA-256s) of a large file in one read."""
    whole, size, sha256s = hashlib.sha256(), 0, []
    for number, chunk in _read_parts(path, part):
        if number == len(sha256s):
            sha256s.append(hashlib.sha256())
        whole.update(chunk)
        sha256s[number].update(chunk)
        size += len(chunk)
    return LargeDigests(size, whole.hexdigest(), composite_checksum([h.digest() for h in sha256s]))


def _read_parts(path: Path, part: int | None) -> Iterator[tuple[int, bytes]]:
    """The file in chunks of at most HASH_CHUNK, so memory stays flat, each with the number of
    the part it falls in (from 0; all 0 when part is None): no chunk straddles two parts."""
    number, in_part = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK if part is None else min(HASH_CHUNK, part - in_part)):
            yield number, chunk
            in_part += len(chunk)
            if in_part == part:
                number, in_part = number + 1, 0


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3, MinIO and moto compute for an object assembled from parts with these MD5s."""
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


def whole_checksum(sha256: str) -> str:
    """The SHA-256 checksum S3, MinIO and moto keep for a single PUT of bytes with this sha256 (hex)."""
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


def composite_checksum(part_sha256s: list[bytes]) -> str:
    """The SHA-256 checksum S3, MinIO and moto keep for an object assembled from parts with these
    SHA-256s: the SHA-256 of the parts' digests end to end (S3 and MinIO show it with "-<parts>")."""
    return base64.b64encode(hashlib.sha256(b"".join(part_sha256s)).digest()).decode("ascii")


def check_put(receipt: PutReceipt, key: str, digests: Digests) -> str:
    """The store's ETag for a verified single PUT; PublishError when the store holds other bytes."""
    if receipt.etag == digests.etag:
        return receipt.etag
    if receipt.encrypted_etag and receipt.checksum_sha256 == digests.sha256:
        return receipt.etag  # S3 and MinIO check x-amz-checksum-sha256 before they answer with it
    raise PublishError(f"upload of {key} did not verify: the store answered ETag {receipt.etag or 'none'}, "
                       f"expected {digests.etag} (MD5 of the bytes sent); check the object store and run again")


def check_multipart(stored: StoredObject | None, key: str, digests: LargeDigests,
                    etag_of_file: Callable[[], str]) -> str:
    """The store's ETag for a verified multipart upload; PublishError when it holds other bytes.

    The store's SHA-256 of what it assembled (S3, MinIO and moto keep one, computed from the
    parts they stored, encrypted or not) is checked against ours. A store that keeps no
    checksums is checked on its ETag instead, which costs one more read of the file for its
    MD5s; under SSE there, on its size and the parts' SHA-256s it checked on upload.
    """
    if stored is not None and stored.size == digests.size:
        if stored.sha256 and stored.sha256 == digests.checksum:
            return stored.etag
        if not stored.sha256 and (stored.encrypted_etag or stored.etag == etag_of_file()):
            return stored.etag
    found = ("nothing" if stored is None
             else f"{stored.size} bytes, SHA-256 {stored.sha256 or 'none'}, ETag {stored.etag}")
    raise PublishError(f"upload of {key} did not verify (expected {digests.size} bytes, SHA-256 "
                       f"{digests.checksum} of its parts; found {found}); check the object store and run again")


def check_all_stored(stored: Mapping[str, ListedObject], copied: list[Copied], uri: str) -> None:
    """Every file's object is there with the size and ETag it had when verified, or PublishError."""
    missing = [c.path for c in copied if c.path not in stored]
    changed = [c.path for c in copied if c.path in stored and stored[c.path] != ListedObject(c.size, c.etag)]
    problems = [f"{what}: {_some(paths)}" for what, paths in (("missing", missing), ("different", changed)) if paths]
    if problems:
        raise PublishError(f"objects under {uri} changed after they were verified ({'; '.join(problems)}); no "
                           "manifest was written: something else writes to this prefix, run again once it stops")


def manifest_bytes(model: str, version: str, source_uri: str, copied: list[Copied]) -> bytes:
    files = sorted(({"path": c.path, "size": c.size, "sha256": c.sha256, CHECKSUM_KEY: c.checksum} for c in copied),
                   key=lambda f: f["path"])
    manifest = {"format": MANIFEST_FORMAT, "model": model, "version": version, "source_uri": source_uri,
                "files": files, "total_bytes": sum(f["size"] for f in files)}
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _some(paths: list[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n} B"


def _rate(n: int, seconds: float) -> float:
    return n / MB / max(seconds, 1e-6)


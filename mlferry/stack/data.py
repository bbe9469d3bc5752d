"""The local stack's S3 objects, saved to disk on `stack down` and put back on `stack up`.

moto, the stack's S3 server, keeps objects in memory only and has no option to store them. Its
request recorder (MOTO_ENABLE_RECORDING) is no fit: it appends every request, reads included, so
the file only grows; a replay re-sends multipart uploads under upload ids that the new server
does not know, and re-sends IAM requests that mint new keys. So the stack saves the objects
themselves, through the S3 API, the way `aws s3 sync` would:

    s3/manifest.json      buckets, and per object: key, size, sha256, ETag, content type,
                          user metadata, checksum algorithm, multipart part size
    s3/objects/<sha256>   each distinct content once (mode 600)

A save downloads only the objects whose ETag or size changed since the last save; a restore
checks every file's sha256 before the server starts, then uploads each object with its content
type, metadata and checksum algorithm, in parts of the same size when it was uploaded in parts,
so that its ETag and checksum come back as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1
CHECKSUMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
CHUNK = 1 << 20


class SnapshotError(RuntimeError):
    """The saved objects cannot be put back as they were; the message names the file."""


@dataclass
class SavedObject:
    bucket: str
    key: str
    size: int
    sha256: str
    etag: str
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    checksum: str = ""  # the algorithm S3 keeps a checksum with (CRC32, SHA256, …), if any
    part_size: int = 0  # uploaded in parts of this size; 0: in one PUT


@dataclass
class Snapshot:
    saved_at: str
    buckets: list[str]
    objects: list[SavedObject]

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


def read(folder: Path) -> Snapshot | None:
    """The last save, or None when nothing was ever saved."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise SnapshotError(f"{path} has format {data.get('format')!r}, this mlferry reads {FORMAT}")
        return Snapshot(data["saved_at"], list(data["buckets"]), [SavedObject(**o) for o in data["objects"]])
    except (ValueError, KeyError, TypeError) as err:
        raise SnapshotError(f"{path} is unreadable ({err})") from None


def verify(folder: Path, snapshot: Snapshot) -> None:
    """Every saved file is there with the bytes it had; raises SnapshotError on the first that is not."""
    checked: set[str] = set()
    for obj in snapshot.objects:
        if obj.sha256 in checked:
            continue
        path = _blob(folder, obj.sha256)
        where = f"{path} (s3://{obj.bucket}/{obj.key})"
        if not path.is_file():
            raise SnapshotError(f"{where} is missing")
        if path.stat().st_size != obj.size or _sha256(path) != obj.sha256:
            raise SnapshotError(f"{where} is corrupt: its sha256 is not the one saved")
        checked.add(obj.sha256)


def save(client: Any, folder: Path) -> Snapshot:
    """Write every bucket's objects under `folder`; what did not change since the last save is
    not downloaded again. The manifest is replaced last, so an interrupted save leaves the
    previous one whole."""
    objects_dir = folder / "objects"
    private_dir(folder)
    private_dir(objects_dir)
    try:
        previous = read(folder)
    except SnapshotError:
        previous = None
    known = {(o.bucket, o.key): o for o in previous.objects} if previous else {}
    buckets = sorted(b["Name"] for b in client.list_buckets().get("Buckets", []))
    saved = []
    for bucket in buckets:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for listed in page.get("Contents", []):
                key = listed["Key"]
                head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
                etag = head.get("ETag", "").strip('"')
                old = known.get((bucket, key))
                if old and old.etag == etag and old.size == head["ContentLength"] and _blob(folder, old.sha256).is_file():
                    sha256 = old.sha256
                else:
                    sha256 = _download(client, bucket, key, objects_dir)
                saved.append(SavedObject(
                    bucket=bucket, key=key, size=int(head["ContentLength"]), sha256=sha256, etag=etag,
                    content_type=head.get("ContentType", ""), metadata=dict(head.get("Metadata", {})),
                    checksum=next((c for c in CHECKSUMS if head.get(f"Checksum{c}")), ""),
                    part_size=_part_size(client, bucket, key) if "-" in etag else 0,
                ))
    snapshot = Snapshot(time.strftime("%Y-%m-%d %H:%M:%S"), buckets, saved)
    write(folder, snapshot)
    _remove_unreferenced(objects_dir, {o.sha256 for o in saved})
    return snapshot


def restore(client: Any, folder: Path, snapshot: Snapshot) -> None:
    """Create the buckets and upload each object as it was (call verify first)."""
    from boto3.s3.transfer import TransferConfig

    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in snapshot.buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    changed = False
    for obj in snapshot.objects:
        path = _blob(folder, obj.sha256)
        extra: dict[str, Any] = {"Metadata": obj.metadata}
        if obj.content_type:
            extra["ContentType"] = obj.content_type
        if obj.checksum:
            extra["ChecksumAlgorithm"] = obj.checksum
        if obj.part_size:
            config = TransferConfig(multipart_threshold=obj.part_size, multipart_chunksize=obj.part_size)
            client.upload_file(str(path), obj.bucket, obj.key, ExtraArgs=extra, Config=config)
            etag = client.head_object(Bucket=obj.bucket, Key=obj.key)["ETag"].strip('"')
        else:
            with open(path, "rb") as body:
                etag = client.put_object(Bucket=obj.bucket, Key=obj.key, Body=body, **extra)["ETag"].strip('"')
        if etag != obj.etag:  # e.g. parts of another size: the next save must know the new ETag
            obj.etag, changed = etag, True
    if changed:
        write(folder, snapshot)


def write(folder: Path, snapshot: Snapshot) -> None:
    private_dir(folder)
    data = {"format": FORMAT, "saved_at": snapshot.saved_at, "buckets": snapshot.buckets,
            "objects": [asdict(o) for o in snapshot.objects]}
    tmp = folder / (MANIFEST + ".tmp")
    write_private(tmp, json.dumps(data, indent=1).encode())
    tmp.replace(folder / MANIFEST)


def _download(client: Any, bucket: str, key: str, objects_dir: Path) -> str:
    """Stream the object into objects_dir under its sha256; returns the sha256."""
    tmp = objects_dir / f".download-{os.getpid()}"
    digest = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        tmp.replace(_blob(objects_dir.parent, sha256))
        return sha256
    finally:
        tmp.unlink(missing_ok=True)


def _part_size(client: Any, bucket: str, key: str) -> int:
    return int(client.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"])


def _remove_unreferenced(objects_dir: Path, keep: set[str]) -> None:
    for path in objects_dir.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _blob(folder: Path, sha256: str) -> Path:
    return folder / "objects" / sha256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, data: str | bytes) -> None:
    """Write and sync a file only its owner may read; an older file's mode is tightened too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, 0o600)  # O_TRUNC keeps the mode of a file left by an older mlferry


@contextlib.contextmanager
def private_umask():
    """Files made inside (by a server or git) are the owner's only."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)

"""The object store: the team's S3-compatible bucket (MinIO on a cluster, moto locally).

One boto3 client, configured the way MinIO needs it (explicit endpoint from
``MLFLOW_S3_ENDPOINT_URL``, path-style addressing), credentials from the usual ``AWS_*``
variables, which boto3 reads itself so that they never pass through mlferry's code or logs.
Every failure becomes a StoreError whose one line says what failed and what to do.
"""

from __future__ import annotations

import base64
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from mlferry.steps.outcome import TransientError, is_transient

MB = 1024 * 1024
# Bounded memory per file: s3transfer reads parts lazily from the file, at most
# max_concurrency parts of multipart_chunksize in flight at once.
TRANSFER = TransferConfig(
    multipart_threshold=16 * MB,
    multipart_chunksize=16 * MB,
    max_concurrency=4,
    use_threads=True,
)
SHA256_KEY = "sha256"  # metadata (x-amz-meta-sha256) put_bytes records: the digest of what it wrote


class StoreError(RuntimeError):
    """The object store refused or could not be reached; the message says what to do."""


class TransientStoreError(StoreError, TransientError):
    """Unreachable, overloaded or 5xx: worth retrying (Argo retries the task on its exit code)."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    etag: str = ""  # unquoted
    encrypted_etag: bool = False  # SSE-KMS or SSE-C: the ETag is then not derived from the bytes' MD5
    sha256: str = ""  # the store's own SHA-256 checksum of what it holds (base64, any "-N" dropped); "" if none


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing: what the store says about an object without a request of its own."""
    size: int
    etag: str  # unquoted; the bytes' MD5 for a plain single PUT, md5-of-part-md5s "-N" for multipart


@dataclass(frozen=True)
class PutReceipt:
    """What the store answered to a single PUT: its own account of the bytes it stored."""
    etag: str  # unquoted
    checksum_sha256: str  # hex of the x-amz-checksum-sha256 the store returned, "" when none
    encrypted_etag: bool  # SSE-KMS or SSE-C: the store's ETag is then not the MD5 of the bytes


def public_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password part, for messages and logs."""
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _s3_description() -> botocore.loaders.Loader:
    """botocore's loader, holding the S3 API's description (a few MB of JSON) read once.

    A process's first client reads and parses it (0.1-0.3 s on this machine): read at import, a
    step forked from a warm server (engine.warm) starts with it. Data files only: no environment
    and no credentials, which each client still reads from its step's own environment.
    """
    loader = botocore.loaders.create_loader()
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        loader.load_service_model("s3", kind)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    return loader


_S3_DESCRIPTION = _s3_description()


def s3_client(environ: Mapping[str, str], connections: int = 20):
    """A boto3 S3 client for the endpoint in MLFLOW_S3_ENDPOINT_URL (AWS itself when unset)."""
    config = Config(
        s3={"addressing_style": "path"},  # MinIO and most on-prem stores have no bucket DNS names
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=connections,  # threads × parts in flight, or urllib3 drops sockets
        connect_timeout=10,
        read_timeout=120,
    )
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _session().client("s3", endpoint_url=environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
                             region_name=region, config=config, **_keys(environ))


def _keys(environ: Mapping[str, str]) -> dict[str, str]:
    """The keys the given environment holds, passed to the client itself: the process's session
    resolves its credential chain once, so a later client for another environment (another
    stack, a test's, a long-lived process's) would otherwise sign with the first one's keys.
    Without keys here, the session's chain (profiles, IRSA, instance roles) answers."""
    if not (environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY")):
        return {}
    keys = {"aws_access_key_id": environ["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": environ["AWS_SECRET_ACCESS_KEY"]}
    if environ.get("AWS_SESSION_TOKEN"):
        keys["aws_session_token"] = environ["AWS_SESSION_TOKEN"]
    return keys


_SESSION: list[boto3.session.Session] = []
_SESSION_LOCK = threading.Lock()


def _session() -> boto3.session.Session:
    """The process's one session, as boto3's default one (credentials are resolved once a process),
    made at first use (in the step's process, never in a warm server), with the S3 description."""
    with _SESSION_LOCK:
        if not _SESSION:
            session = botocore.session.Session()
            if not os.environ.get("AWS_DATA_PATH"):  # botocore's own loader would look there first
                session.register_component("data_loader", _S3_DESCRIPTION)
            _SESSION.append(boto3.session.Session(botocore_session=session))
        return _SESSION[0]


class ObjectStore:
    """One bucket, addressed by keys; the operations the publish step needs, nothing more."""

    def __init__(self, client, bucket: str, endpoint: str = ""):
        self.client = client
        self.bucket = bucket
        self.where = public_endpoint(endpoint)

    @classmethod
    def from_env(cls, bucket: str, environ: Mapping[str, str] | None = None,
                 connections: int = 20) -> "ObjectStore":
        environ = os.environ if environ is None else environ
        return cls(s3_client(environ, connections), bucket, environ.get("MLFLOW_S3_ENDPOINT_URL", ""))

    def check_bucket(self) -> None:
        with self._explained("reach bucket"):
            self.client.head_bucket(Bucket=self.bucket)

    def objects(self, prefix: str) -> dict[str, ListedObject]:
        """Every object under prefix: key relative to prefix → size and ETag (one request per 1,000)."""
        found: dict[str, ListedObject] = {}
        with self._explained(f"list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(prefix):]] = ListedObject(int(obj["Size"]), _unquoted(obj.get("ETag", "")))
        return found

    def head(self, key: str) -> StoredObject | None:
        with self._explained(f"read the metadata of {key}"):
            try:
                meta = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            except ClientError as err:
                if _error_code(err) in ("404", "NoSuchKey", "NotFound"):
                    return None  # asking whether it exists is the point of a HEAD
                raise
        return StoredObject(int(meta["ContentLength"]), _unquoted(meta.get("ETag", "")), _encrypted_etag(meta),
                            meta.get("ChecksumSHA256", "").split("-")[0])  # S3 and MinIO add "-<parts>", moto not

    def put_file(self, path: Path, key: str, sha256: str, md5: str) -> PutReceipt:
        """One PUT of a file below the multipart threshold, with its digests (hex) sent along.

        Content-MD5 and x-amz-checksum-sha256 make S3 and MinIO refuse a body that arrived
        different, and they keep that sha256 as the object's checksum; the receipt's ETag lets
        the caller check the bytes where a server does not (moto). Passing the sha256 also
        spares botocore a checksum pass of its own; naming the algorithm as well makes moto keep
        it too (S3 and MinIO keep it either way).
        """
        with self._explained(f"upload {key}"), open(path, "rb") as body:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentMD5=_base64(md5), ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_base64(sha256))
        echoed = answer.get("ChecksumSHA256", "")
        return PutReceipt(_unquoted(answer.get("ETag", "")), base64.b64decode(echoed).hex() if echoed else "",
                          _encrypted_etag(answer))

    def upload_file(self, path: Path, key: str, on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload a large file in parts (s3transfer, bounded memory), each sent with its SHA-256:
        S3 and MinIO check each part's, and keep the SHA-256 of the parts' SHA-256s as the
        object's checksum. A CRC would be cheaper, but whoever can write to the bucket can forge
        one for other bytes; not a SHA-256. on_bytes is called from s3transfer's threads with the
        bytes sent since its last call (negative on a retry)."""
        with self._explained(f"upload {key}"):
            self.client.upload_file(str(path), self.bucket, key, Config=TRANSFER, Callback=on_bytes,
                                    ExtraArgs={"ChecksumAlgorithm": "SHA256"})

    def get_bytes(self, key: str) -> bytes:
        """A small object (the manifest) read whole."""
        with self._explained(f"read {key}"):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put_bytes(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        with self._explained(f"write {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                   Metadata={SHA256_KEY: sha256})

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            with self._explained(f"delete {len(batch)} objects"):
                result = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StoreError(f"could not delete s3://{self.bucket}/{first['Key']} on {self.where}: "
                                 f"{first.get('Message', first.get('Code'))}; check the credentials' delete permission")

    @contextmanager
    def _explained(self, action: str) -> Iterator[None]:
        """Turns boto3's exceptions into one StoreError line: what failed and what to do."""
        try:
            yield
        except (ClientError, BotoCoreError) as err:
            kind = TransientStoreError if is_transient(err) else StoreError
            raise kind(explain(err, _error_code(err), action, self.bucket, self.where)) from None


def _encrypted_etag(answer: Mapping) -> bool:
    """S3 and MinIO derive the ETag from the bytes' MD5 except under SSE-KMS and SSE-C."""
    return str(answer.get("ServerSideEncryption", "")).startswith("aws:kms") or bool(answer.get("SSECustomerAlgorithm"))


def _unquoted(etag: str) -> str:
    return etag.strip('"')


def _base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def _error_code(err: Exception) -> str:
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return type(err).__name__


def explain(err: Exception, code: str, action: str, bucket: str, where: str) -> str:
    if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and action == "reach bucket"):
        return f"bucket {bucket!r} does not exist on {where}; create it or set MLFERRY_BUCKET"
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
        return (f"access to bucket {bucket!r} on {where} was denied ({code}) while trying to {action}; "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")
    if isinstance(err, NoCredentialsError):
        return f"no S3 credentials to {action} on {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(err, EndpointConnectionError):
        return f"cannot connect to the object store at {where} to {action}; check MLFLOW_S3_ENDPOINT_URL"
    detail = str(err).splitlines()[0] if str(err) else code
    return f"object store {where} failed to {action} in bucket {bucket!r}: {detail}; retry, or check the store"

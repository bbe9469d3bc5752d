"""The publish step against the real stack: MLflow (artifacts proxied to S3) and an S3 server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from mlferry.stack import ARTIFACTS_BUCKET
from mlferry.steps import artifacts, store as store_module
from mlferry.steps.artifacts import ProxiedSource, SourceError, SourceFile, check_artifact_path, entry_path, open_source
from mlferry.steps.layout import MANIFEST_NAME, model_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.publish import (CHECKSUM_KEY, MANIFEST_FORMAT, Digests, LargeDigests, Publication, PublishError,
                                   PublishInput, check_multipart, check_put, file_digests, large_file_digests,
                                   parse_manifest, publish, publish_version)
from mlferry.steps.store import MB, TRANSFER, ObjectStore, PutReceipt, StoredObject, StoreError, public_endpoint

BUCKET = "mlferry"
REPO = Path(__file__).resolve().parents[1]
MD5_ABC = hashlib.md5(b"abc").hexdigest()
SHA_ABC = hashlib.sha256(b"abc").hexdigest()
CHECKSUM_ABC = base64.b64encode(hashlib.sha256(b"abc").digest()).decode()  # as S3 keeps it for a single PUT
WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "DeleteObjects",
          "CopyObject"}


@pytest.fixture
def s3_calls(stack, monkeypatch) -> list[tuple[str, str | None]]:
    """(operation, key) of every S3 call the step's own client makes, in order."""
    calls: list[tuple[str, str | None]] = []
    real = store_module.s3_client

    def recording(environ, connections=20):
        client = real(environ, connections)
        client.meta.events.register(
            "provide-client-params.s3", lambda model, params, **_: calls.append((model.name, params.get("Key"))))
        return client

    monkeypatch.setattr(store_module, "s3_client", recording)
    return calls


def download_uri(name: str, version: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_download_uri(name, version)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mlflow_hashes(uri: str, tmp_path: Path) -> dict[str, str]:
    """path → sha256 of the version's files as MLflow itself downloads them."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "mlflow")))
    return {p.relative_to(local).as_posix(): sha256(p.read_bytes()) for p in local.rglob("*") if p.is_file()}


def s3_hashes(s3, prefix: str) -> dict[str, str]:
    """path → sha256 of each object under prefix (the manifest left out), fetched from S3."""
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k[len(prefix):]: sha256(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
            for k in keys if k != prefix + MANIFEST_NAME}


def manifest(s3, prefix: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME)["Body"].read()


def inputs_for(name: str, version: str, uri: str | None = None) -> PublishInput:
    return PublishInput(model=name, version=version, slug=slugify(name), source_uri=uri or download_uri(name, version))


def local_model(folder: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder.as_uri()


# -- through MLflow -----------------------------------------------------------------------------

def test_publishes_a_registered_model_byte_for_byte_with_the_manifest_last(registered_model, s3, s3_calls, tmp_path):
    name, version = registered_model(extra_files={"a/b/c.txt": b"nested three deep", "sub/x.bin": os.urandom(300_000)})
    inputs = inputs_for(name, version)

    result = publish(inputs)

    prefix = model_prefix(inputs.slug, version)
    source = mlflow_hashes(inputs.source_uri, tmp_path)
    assert s3_hashes(s3, prefix) == source
    assert {"a/b/c.txt", "sub/x.bin", "MLmodel"} <= set(source)
    assert result == Publication(uri=f"s3://{BUCKET}/{prefix}", files=len(source), uploaded=len(source), skipped=0,
                                 bytes_uploaded=result.bytes_uploaded, manifest_sha256=result.manifest_sha256)
    raw = manifest(s3, prefix)
    written = json.loads(raw)
    assert written["format"] == MANIFEST_FORMAT
    assert (written["model"], written["version"], written["source_uri"]) == (name, version, inputs.source_uri)
    assert [f["path"] for f in written["files"]] == sorted(source)
    assert {f["path"]: f["sha256"] for f in written["files"]} == source
    assert written["total_bytes"] == sum(f["size"] for f in written["files"]) == result.bytes_uploaded
    assert result.manifest_sha256 == sha256(raw)
    writes = [(op, key) for op, key in s3_calls if op in WRITES]
    assert writes[-1] == ("PutObject", prefix + MANIFEST_NAME)
    assert [key for _, key in writes].count(prefix + MANIFEST_NAME) == 1
    # Each file's checksum as the store keeps it, for a later run to compare the objects' with.
    store = ObjectStore.from_env(BUCKET)
    assert {f["path"]: f[CHECKSUM_KEY] for f in written["files"]} == {p: store.head(prefix + p).sha256 for p in source}


def test_second_publish_uploads_nothing_and_never_downloads_the_source(registered_model, s3, s3_calls, monkeypatch):
    name, version = registered_model(extra_files={"a/b/c.txt": b"x"})
    inputs = inputs_for(name, version)
    first = publish(inputs)
    s3_calls.clear()

    def no_download(self, path):
        raise AssertionError(f"the source was downloaded: {path}")

    monkeypatch.setattr(ProxiedSource, "fetch", no_download)
    again = publish(inputs)

    assert (again.uploaded, again.skipped, again.bytes_uploaded) == (0, first.files, 0)
    assert again.manifest_sha256 == first.manifest_sha256
    prefix = model_prefix(inputs.slug, version)
    # One listing of the prefix, one read of the manifest, then one HEAD per object for the
    # checksum the store keeps of its bytes (sizes alone would miss a same-size replacement).
    assert s3_calls[:3] == [("HeadBucket", None), ("ListObjectsV2", None), ("GetObject", prefix + MANIFEST_NAME)]
    published = [f["path"] for f in json.loads(manifest(s3, prefix))["files"]]
    assert sorted(s3_calls[3:]) == sorted(("HeadObject", prefix + path) for path in published)


def test_a_partial_copy_is_completed_and_corrected(registered_model, s3, tmp_path):
    name, version = registered_model(extra_files={"sub/x.bin": os.urandom(50_000), "sub/y.bin": os.urandom(70_000)})
    inputs = inputs_for(name, version)
    first = publish(inputs)
    prefix = model_prefix(inputs.slug, version)
    original_manifest = manifest(s3, prefix)
    # What a crashed or tampered earlier run could leave: no manifest, one object gone, one
    # with other bytes of the same size (and honest metadata for them), one stray object.
    s3.delete_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME)
    s3.delete_object(Bucket=BUCKET, Key=prefix + "sub/x.bin")
    other = os.urandom(70_000)
    s3.put_object(Bucket=BUCKET, Key=prefix + "sub/y.bin", Body=other, Metadata={"sha256": sha256(other)})
    s3.put_object(Bucket=BUCKET, Key=prefix + "stray/left-over.tmp", Body=b"junk")

    again = publish(inputs)

    assert (again.uploaded, again.skipped) == (2, first.files - 2)
    assert again.bytes_uploaded == 120_000
    assert s3_hashes(s3, prefix) == mlflow_hashes(inputs.source_uri, tmp_path)
    assert manifest(s3, prefix) == original_manifest  # deterministic: same copy, same manifest
    assert again.manifest_sha256 == first.manifest_sha256


def test_publishes_from_s3_uri_the_same_files_as_through_the_server(registered_model, s3, monkeypatch):
    name, version = registered_model(extra_files={"a/b/c.txt": b"nested"})
    proxied = download_uri(name, version)
    direct = proxied.replace("mlflow-artifacts:/", f"s3://{ARTIFACTS_BUCKET}/", 1)
    assert direct != proxied
    monkeypatch.setenv("MLFERRY_ALLOWED_SOURCES", f"s3://{ARTIFACTS_BUCKET}/")  # the team's own artifact store
    via_server = publish(inputs_for(name, version, proxied))
    via_s3 = publish(PublishInput(model=name, version=version, slug=slugify(name + "-direct"), source_uri=direct))

    files = [json.loads(manifest(s3, model_prefix(slug, version)))["files"]
             for slug in (slugify(name), slugify(name + "-direct"))]
    assert files[0] == files[1]
    assert via_server.files == via_s3.files


# -- immutability ----------------------------------------------------------------------------------

def test_a_complete_prefix_from_another_source_is_refused(stack, s3, s3_calls, tmp_path, unique_name):
    slug = slugify(unique_name)
    first = local_model(tmp_path / "one", {"model.bin": b"one"})
    second = local_model(tmp_path / "two", {"model.bin": b"two"})
    publish(PublishInput(model="fixed", version="1", slug=slug, source_uri=first))
    s3_calls.clear()

    with pytest.raises(PublishError, match=r"already published from a different source.*immutable"):
        publish(PublishInput(model="fixed", version="1", slug=slug, source_uri=second))
    assert not [c for c in s3_calls if c[0] in WRITES]
    assert s3.get_object(Bucket=BUCKET, Key=f"models/{slug}/1/model.bin")["Body"].read() == b"one"


def test_a_source_that_changed_since_publishing_is_refused(stack, tmp_path, unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"model.bin": b"v1", "extra/notes.txt": b"n"})
    publish(PublishInput(model="grows", version="3", slug=slug, source_uri=uri))
    (tmp_path / "m" / "model.bin").write_bytes(b"v1 plus more")
    (tmp_path / "m" / "new.txt").write_bytes(b"new")

    with pytest.raises(PublishError, match=r"new files: new\.txt; sizes changed: model\.bin.*immutable"):
        publish(PublishInput(model="grows", version="3", slug=slug, source_uri=uri))


def test_a_complete_prefix_damaged_after_publishing_is_refused_not_repaired(stack, s3, tmp_path, unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"a.bin": b"a", "b.bin": b"b"})
    publish(PublishInput(model="damaged", version="1", slug=slug, source_uri=uri))
    s3.delete_object(Bucket=BUCKET, Key=f"models/{slug}/1/a.bin")

    with pytest.raises(PublishError, match=r"no longer match its manifest \(missing: a\.bin\)"):
        publish(PublishInput(model="damaged", version="1", slug=slug, source_uri=uri))


def put_other_bytes(s3, key: str, data: bytes, how: str) -> None:
    """Replace an object the way anyone with write access could, stored as S3 and MinIO store it:
    each checksum is computed from (or checked against) the bytes themselves."""
    if how == "multipart":
        config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB)
        s3.upload_fileobj(io.BytesIO(data), BUCKET, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)
    elif how == "own sha256":
        s3.put_object(Bucket=BUCKET, Key=key, Body=data, ChecksumAlgorithm="SHA256")
    else:  # botocore's default: a CRC32, or no checksum at all from older clients
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)


REPLACED = r"the store's SHA-256 checksum of it is \S+, the manifest's \S+: its bytes were replaced after publishing"
NO_CHECKSUM = r"the store keeps no SHA-256 checksum for it \(written by an older mlferry, or by hand\)"


@pytest.mark.parametrize("how, why", [("sdk default", NO_CHECKSUM), ("own sha256", REPLACED), ("multipart", REPLACED)],
                         ids=["sdk-default", "own-sha256", "multipart"])
def test_same_size_bytes_under_a_complete_prefix_are_copied_again_and_the_replacement_logged(
        stack, s3, tmp_path, unique_name, caplog, how, why):
    slug = slugify(unique_name)
    prefix = f"models/{slug}/1/"
    size = 17 * MB if how == "multipart" else 70_000
    model = {"model.skops": os.urandom(size), "MLmodel": b"flavors: {}\n"}
    inputs = PublishInput(model="tampered", version="1", slug=slug, source_uri=local_model(tmp_path / "m", model))
    first = publish(inputs)
    published = manifest(s3, prefix)
    put_other_bytes(s3, prefix + "model.skops", os.urandom(size), how)

    with caplog.at_level(logging.WARNING, logger="mlferry.steps.publish"):
        again = publish(inputs)

    assert (again.uploaded, again.skipped, again.bytes_uploaded) == (1, 1, size)
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "model.skops")["Body"].read() == model["model.skops"]
    assert manifest(s3, prefix) == published and again.manifest_sha256 == first.manifest_sha256
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert re.fullmatch(rf"replacing model\.skops under s3://{BUCKET}/{prefix}: {why}.*; copying it again from "
                        rf"{re.escape(inputs.source_uri)}", line), line
    assert publish(inputs).uploaded == 0  # for good: the copy has the checksum the manifest records


def test_a_doubted_object_is_not_copied_from_a_source_whose_bytes_changed(stack, s3, s3_calls, tmp_path, unique_name):
    slug = slugify(unique_name)
    key = f"models/{slug}/1/model.bin"
    uri = local_model(tmp_path / "m", {"model.bin": b"one"})
    publish(PublishInput(model="moved", version="1", slug=slug, source_uri=uri))
    (tmp_path / "m" / "model.bin").write_bytes(b"two")  # same size: only its bytes tell
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"bad", ChecksumAlgorithm="SHA256")
    s3_calls.clear()

    with pytest.raises(PublishError, match=r"must be copied again \(the store's SHA-256 .*\), but .* no longer holds "
                                           r"the published bytes .*immutable"):
        publish(PublishInput(model="moved", version="1", slug=slug, source_uri=uri))
    assert not [c for c in s3_calls if c[0] in WRITES]


def test_a_manifest_from_before_checksums_vouches_for_single_puts_only():
    entries = [{"path": "small", "size": 3, "sha256": SHA_ABC},
               {"path": "big", "size": TRANSFER.multipart_threshold, "sha256": SHA_ABC},
               {"path": "new", "size": TRANSFER.multipart_threshold, "sha256": SHA_ABC, CHECKSUM_KEY: "c29tZQ=="}]
    raw = json.dumps({"format": MANIFEST_FORMAT, "source_uri": "s", "files": entries}).encode()
    files = parse_manifest(raw, "s3://b/p/").files
    assert {path: f.checksum for path, f in files.items()} == {"small": CHECKSUM_ABC, "big": "", "new": "c29tZQ=="}


def test_a_large_file_under_a_manifest_from_before_checksums_is_checked_against_the_source(stack, s3, tmp_path,
                                                                                            unique_name, caplog):
    slug = slugify(unique_name)
    prefix = f"models/{slug}/1/"
    uri = local_model(tmp_path / "m", {"big.bin": os.urandom(17 * MB), "MLmodel": b"flavors: {}\n"})
    inputs = PublishInput(model="legacy", version="1", slug=slug, source_uri=uri)
    publish(inputs)
    # As an older mlferry left it: parts sent with CRC32s, a manifest without checksums.
    s3.upload_file(str(tmp_path / "m" / "big.bin"), BUCKET, prefix + "big.bin", Config=TRANSFER,
                   ExtraArgs={"ChecksumAlgorithm": "CRC32"})
    old = json.loads(manifest(s3, prefix))
    for entry in old["files"]:
        del entry[CHECKSUM_KEY]
    s3.put_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME, Body=json.dumps(old).encode())

    with caplog.at_level(logging.WARNING, logger="mlferry.steps.publish"):
        assert publish(inputs).uploaded == 1  # no SHA-256 on the object: nothing vouches for it
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["replacing big.bin under s3"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlferry.steps.publish"):
        # Its checksum is now that of the source's bytes, whose sha256 is the manifest's: kept, not sent.
        assert publish(inputs).uploaded == 0
    assert any(r.getMessage().startswith("kept big.bin: the store's SHA-256 checksum") for r in caplog.records)


# -- what is refused before anything is written ---------------------------------------------------

def test_a_symlink_in_a_local_model_is_refused_and_nothing_uploaded(stack, s3, s3_calls, tmp_path, unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"aaa.bin": b"first", "sub/zzz.bin": b"last"})
    (tmp_path / "secret").write_text("not part of the model")
    (tmp_path / "m" / "sub" / "link").symlink_to(tmp_path / "secret")

    with pytest.raises(SourceError, match=r"'sub/link'.*symlink"):
        publish(PublishInput(model="linked", version="1", slug=slug, source_uri=uri))
    assert s3_calls == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{slug}/")


def test_a_bad_path_anywhere_in_the_listing_stops_the_copy_before_the_first_upload(stack, s3_calls, tmp_path):
    class Listed:
        uri = "mlflow-artifacts:/0/models/m-x/artifacts"

        def files(self):
            return [SourceFile("MLmodel", 10), SourceFile("weights/w.bin", 10), SourceFile("x/../../etc", 1)]

        def fetch(self, path):
            raise AssertionError("nothing may be fetched")

    store = ObjectStore.from_env(BUCKET)
    with pytest.raises(SourceError, match=r"'x/\.\./\.\./etc' contains '\.' or '\.\.'"):
        publish_version(Listed(), store, "m", "1", "bad-path-test")
    assert s3_calls == []


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../../b", "a\\b", "a//b", "a/", "./a", "", "a/\nb"])
def test_paths_that_leave_the_model_folder_are_refused(path):
    with pytest.raises(SourceError, match="artifact path"):
        check_artifact_path(path)


@pytest.mark.parametrize("name, folder, expected", [
    ("MLmodel", "", "MLmodel"),
    ("x.bin", "sub", "sub/x.bin"),
    ("deeper/", "sub", "sub/deeper"),  # a folder entry may end in '/'
])
def test_listed_entries_are_made_relative_to_the_model_folder(name, folder, expected):
    assert entry_path(folder, name, "mlflow-artifacts:/1/models/m-1/artifacts") == expected


@pytest.mark.parametrize("name", ["../x.bin", "other/x.bin", "..", "", "/etc/passwd/"])
def test_a_listed_entry_that_leaves_the_listed_folder_is_refused(name):
    with pytest.raises(SourceError, match="leaves"):
        entry_path("sub", name, "mlflow-artifacts:/1/models/m-1/artifacts")


def test_an_unknown_source_scheme_is_refused():
    with pytest.raises(SourceError, match=r"unknown model source scheme 'gs'.*mlflow-artifacts:"):
        open_source("gs://bucket/models/m/artifacts")


def test_endpoints_in_messages_carry_no_credentials():
    assert public_endpoint("https://key:secret@minio.ml.svc:9000/") == "https://minio.ml.svc:9000/"


def test_an_unreachable_store_is_a_transient_failure(tmp_path):
    import boto3
    from botocore.config import Config

    from mlferry.steps.outcome import is_transient

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s", config=Config(retries={"total_max_attempts": 1}))
    source = open_source(local_model(tmp_path / "m", {"model.bin": b"x"}))
    with pytest.raises(StoreError, match=r"cannot connect to the object store at .*check MLFLOW_S3_ENDPOINT_URL") as err:
        publish_version(source, ObjectStore(client, BUCKET, endpoint), "m", "1", "unreachable")
    assert is_transient(err.value)  # Argo retries it


def test_a_missing_bucket_says_what_to_do(stack, tmp_path):
    source = artifacts.open_source(local_model(tmp_path / "m", {"model.bin": b"x"}))
    store = ObjectStore.from_env("no-such-bucket")
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket' does not exist on http://127\.0\.0\.1:\d+; "
                                         r"create it or set MLFERRY_BUCKET"):
        publish_version(source, store, "m", "1", "missing-bucket-test")


# -- verification: the store's own account of the bytes, not a HEAD per file ----------------------

def corrupting(client, operation: str, key_suffix: str) -> list[str]:
    """Flip one byte of every `operation` body sent for a key ending in key_suffix, after the
    digests were computed: what a faulty network, proxy or disk on the way would do. moto checks
    neither Content-MD5 nor x-amz-checksum-sha256, so it stores what arrives."""
    hit: list[str] = []

    def corrupt(request, **_):
        if not request.url.split("?")[0].endswith(key_suffix):
            return
        body = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
        request.body = bytes([body[0] ^ 1]) + body[1:]
        hit.append(request.url)

    client.meta.events.register(f"before-send.s3.{operation}", corrupt)
    return hit


def test_a_small_file_corrupted_on_the_way_is_caught_by_the_put_etag_and_rerun_repairs_it(stack, s3, tmp_path,
                                                                                          unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"a.bin": os.urandom(70_000), "MLmodel": b"flavors: {}\n"})
    store = ObjectStore.from_env(BUCKET)
    hit = corrupting(store.client, "PutObject", "/a.bin")

    with pytest.raises(PublishError, match=r"upload of models/.*/a\.bin did not verify: the store answered ETag"):
        publish_version(open_source(uri), store, "m", "1", slug)
    assert hit
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{slug}/1/{MANIFEST_NAME}")

    again = publish_version(open_source(uri), ObjectStore.from_env(BUCKET), "m", "1", slug)
    assert again.uploaded >= 1  # the corrupted object is not kept: its ETag is not the file's MD5
    assert s3_hashes(s3, f"models/{slug}/1/") == {p: sha256((tmp_path / "m" / p).read_bytes())
                                                  for p in ("a.bin", "MLmodel")}


def test_a_part_corrupted_on_the_way_is_caught_by_the_multipart_etag(stack, s3, tmp_path, unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"big.bin": os.urandom(17 * 1024 * 1024)})  # two parts
    store = ObjectStore.from_env(BUCKET)
    hit = corrupting(store.client, "UploadPart", "/big.bin")

    # The store's own SHA-256 of what it assembled (moto computes it from the stored parts) differs.
    with pytest.raises(PublishError, match=r"upload of models/.*/big\.bin did not verify \(expected \d+ bytes, "
                                           r"SHA-256 \S+ of its parts; found \d+ bytes, SHA-256 [A-Za-z0-9+/]{43}=,"):
        publish_version(open_source(uri), store, "m", "1", slug)
    assert hit
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{slug}/1/{MANIFEST_NAME}")


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
def test_an_object_lost_after_its_upload_is_caught_before_the_manifest(stack, s3, tmp_path, unique_name, damage):
    slug = slugify(unique_name)
    prefix = f"models/{slug}/1/"
    uri = local_model(tmp_path / "m", {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000})
    store = ObjectStore.from_env(BUCKET)
    listings = []

    def meddle(**_):  # another writer, between the uploads and the final listing
        listings.append(1)
        if len(listings) == 2:
            if damage == "deleted":
                s3.delete_object(Bucket=BUCKET, Key=prefix + "a.bin")
            else:
                s3.put_object(Bucket=BUCKET, Key=prefix + "a.bin", Body=b"x" * 1000)

    store.client.meta.events.register("before-call.s3.ListObjectsV2", meddle)
    shown = "missing" if damage == "deleted" else "different"
    with pytest.raises(PublishError, match=rf"changed after they were verified \({shown}: a\.bin\); no manifest"):
        publish_version(open_source(uri), store, "m", "1", slug)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + MANIFEST_NAME)


def test_a_fresh_publish_sends_one_put_per_small_file_and_no_per_file_read(stack, s3_calls, tmp_path, unique_name):
    uri = local_model(tmp_path / "m", {f"shard-{i}.bin": os.urandom(1000) for i in range(30)})
    publish(PublishInput(model="m", version="1", slug=slugify(unique_name), source_uri=uri))

    ops = [op for op, _ in s3_calls]
    assert ops.count("PutObject") == 31  # 30 files and the manifest
    assert ops.count("ListObjectsV2") == 2  # before copying, and once to confirm all of it
    assert "HeadObject" not in ops and "GetObject" not in ops


def test_a_rerun_after_a_crash_keeps_every_verified_object_from_the_listing_alone(stack, s3, s3_calls, tmp_path,
                                                                                  unique_name):
    slug = slugify(unique_name)
    uri = local_model(tmp_path / "m", {"a.bin": os.urandom(5000), "sub/b.bin": os.urandom(7000)})
    inputs = PublishInput(model="m", version="1", slug=slug, source_uri=uri)
    first = publish(inputs)
    s3.delete_object(Bucket=BUCKET, Key=f"models/{slug}/1/{MANIFEST_NAME}")  # died just before the manifest
    s3_calls.clear()

    again = publish(inputs)

    assert (again.uploaded, again.skipped, again.manifest_sha256) == (0, 2, first.manifest_sha256)
    assert [op for op, _ in s3_calls] == ["HeadBucket", "ListObjectsV2", "ListObjectsV2", "PutObject"]


@pytest.mark.parametrize("receipt, verifies", [
    (PutReceipt(MD5_ABC, "", False), True),  # the store's MD5 of what it stored
    (PutReceipt("0" * 32, "", False), False),  # other bytes
    (PutReceipt("", "", False), False),  # no ETag: nothing vouches for the bytes
    (PutReceipt("0" * 32, SHA_ABC, True), True),  # SSE-KMS/SSE-C: the server-checked sha256
    (PutReceipt("0" * 32, SHA_ABC, False), False),  # an echoed checksum alone (moto echoes unchecked)
    (PutReceipt("0" * 32, "1" * 64, True), False),
])
def test_a_single_put_verifies_only_on_the_stores_own_digest(receipt, verifies):
    digests = Digests(3, SHA_ABC, MD5_ABC, MD5_ABC, CHECKSUM_ABC)
    if verifies:
        assert check_put(receipt, "k", digests) == receipt.etag
    else:
        with pytest.raises(PublishError, match="upload of k did not verify"):
            check_put(receipt, "k", digests)


@pytest.mark.parametrize("stored, verifies", [
    (StoredObject(3, "x-2", False, "c29tZQ=="), True),  # the store's SHA-256 of the parts' SHA-256s
    (StoredObject(3, "x-2", True, "c29tZQ=="), True),  # encrypted or not
    (StoredObject(3, "e-2", False, CHECKSUM_ABC), False),  # other bytes, whatever the ETag
    (StoredObject(4, "x-2", False, "c29tZQ=="), False),
    (StoredObject(3, "e-2", False, ""), True),  # a store that keeps no checksums: its ETag
    (StoredObject(3, "f-2", False, ""), False),
    (StoredObject(3, "random", True, ""), True),  # ...and under SSE there, the size
    (None, False),
])
def test_a_multipart_upload_verifies_on_the_stores_own_checksum(stored, verifies):
    digests = LargeDigests(3, SHA_ABC, checksum="c29tZQ==")
    if verifies:
        assert check_multipart(stored, "k", digests, lambda: "e-2") == stored.etag
    else:
        with pytest.raises(PublishError, match="upload of k did not verify"):
            check_multipart(stored, "k", digests, lambda: "e-2")


def s3_checksum(data: bytes, part: int | None = None) -> str:
    """The SHA-256 checksum S3 keeps: of the bytes for a single PUT; of the parts' SHA-256s,
    end to end, for a multipart upload (shown with "-<parts>", left off here)."""
    if part is None:
        return base64.b64encode(hashlib.sha256(data).digest()).decode()
    parts = b"".join(hashlib.sha256(data[i:i + part]).digest() for i in range(0, len(data), part))
    return base64.b64encode(hashlib.sha256(parts).digest()).decode()


def test_the_checksum_of_a_large_file_is_the_one_s3_keeps_for_its_parts(tmp_path, stack, s3, unique_name):
    part = 5 * MB  # the smallest part S3 takes
    data = os.urandom(2 * part + 5)
    (tmp_path / "f").write_bytes(data)
    assert large_file_digests(tmp_path / "f", part) == LargeDigests(len(data), sha256(data), s3_checksum(data, part))
    # and it is what the store answers (moto, like S3, computes it from the parts it stored)
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    key = f"checksums/{unique_name}"
    s3.upload_file(str(tmp_path / "f"), BUCKET, key, Config=config, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    stored = ObjectStore.from_env(BUCKET).head(key)
    assert stored is not None and stored.sha256 == s3_checksum(data, part)


def test_the_expected_etag_is_the_md5_of_the_parts_md5s(tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "f").write_bytes(data)
    part = 1024 * 1024
    parts = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    assert file_digests(tmp_path / "f", part) == Digests(len(data), sha256(data), "",
                                                         hashlib.md5(b"".join(parts)).hexdigest() + "-3",
                                                         s3_checksum(data, part))
    md5 = hashlib.md5(data).hexdigest()
    assert file_digests(tmp_path / "f", None) == Digests(len(data), sha256(data), md5, md5, s3_checksum(data))
    (tmp_path / "even").write_bytes(data[:2 * part])  # parts end exactly at the end: no empty third part
    assert file_digests(tmp_path / "even", part).etag == hashlib.md5(b"".join(parts[:2])).hexdigest() + "-2"
    (tmp_path / "empty").write_bytes(b"")
    empty = hashlib.md5(b"").hexdigest()
    assert file_digests(tmp_path / "empty", None) == Digests(0, sha256(b""), empty, empty, s3_checksum(b""))


# -- large models ----------------------------------------------------------------------------------

BIG = 200 * 1024 * 1024
RSS_LIMIT_MB = 300

# Peak memory is read from the child's VmHWM (peak RSS of its own process image). Its
# ru_maxrss is not usable here: Linux carries the parent's peak into a child across
# vfork+exec, so a child of pytest reports at least pytest's own peak even if it does nothing.
RUN_PUBLISH = """
import json, logging, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from mlferry.steps.publish import PublishInput, publish
uri, model, version, slug = sys.argv[1:]
result = publish(PublishInput(model=model, version=version, slug=slug, source_uri=uri))
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"publication": result.model_dump(), "peak_rss_kb": hwm_kb,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    """A 200 MB file of random bytes, written in chunks, and its sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(BIG // (8 * 1024 * 1024)):
            chunk = os.urandom(8 * 1024 * 1024)
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


def publish_in_subprocess(uri: str, model: str, version: str, slug: str) -> tuple[Publication, float]:
    """Publish in a fresh process, so that pytest's memory does not count; (result, peak RSS in MB)."""
    run = subprocess.run([sys.executable, "-c", RUN_PUBLISH, uri, model, version, slug], cwd=REPO,
                         env=os.environ, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    rss_mb = report["peak_rss_kb"] / 1024
    progress = [line for line in run.stderr.splitlines() if "big.bin" in line or "published" in line]
    print(f"\n{uri.split(':')[0]}: peak RSS {rss_mb:.0f} MB (ru_maxrss, inherited from pytest: "
          f"{report['ru_maxrss_kb'] / 1024:.0f} MB); " + " | ".join(progress))
    return Publication.model_validate(report["publication"]), rss_mb


def assert_stored_big_file(s3, key: str, sha: str) -> None:
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == BIG
    stored = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1 << 20):
        stored.update(chunk)
    assert stored.hexdigest() == sha


def test_a_200_mb_local_model_publishes_in_bounded_memory(stack, s3, tmp_path, big_file, unique_name):
    path, sha = big_file
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    os.link(path, folder / "weights" / "big.bin")  # a hard link is a regular file, not a symlink
    (folder / "MLmodel").write_text("flavors: {}\n")
    slug = slugify(unique_name)

    result, rss_mb = publish_in_subprocess(folder.as_uri(), "big", "1", slug)

    assert rss_mb < RSS_LIMIT_MB
    assert result.bytes_uploaded == BIG + len("flavors: {}\n")
    assert_stored_big_file(s3, f"models/{slug}/1/weights/big.bin", sha)


def test_a_200_mb_artifact_through_the_mlflow_server_publishes_in_bounded_memory(registered_model, s3, big_file):
    """Guards against MLflow's ranged download, which holds 100 MB ranges in memory."""
    from mlflow.artifacts import get_artifact_repository  # type: ignore[attr-defined]

    path, sha = big_file
    name, version = registered_model()
    uri = download_uri(name, version)
    get_artifact_repository(uri).log_artifact(str(path), "weights")

    result, rss_mb = publish_in_subprocess(uri, name, version, slugify(name))

    assert rss_mb < RSS_LIMIT_MB
    assert result.bytes_uploaded > BIG
    assert_stored_big_file(s3, f"models/{slugify(name)}/{version}/weights/big.bin", sha)


def test_each_store_signs_with_the_keys_of_its_own_environment(stack):
    """A process makes one boto3 session, whose credential chain resolves once; a store built for
    another environment (a second stack, a long-lived process's next run) must sign with that
    environment's keys, neither with the first store's nor with this process's."""
    from mlferry.steps.store import ObjectStore, StoreError

    right = dict(os.environ)
    wrong = {**right, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    bucket = right["MLFERRY_BUCKET"]
    ObjectStore.from_env(bucket, right).check_bucket()
    with pytest.raises(StoreError, match=r"denied \(403\)"):
        ObjectStore.from_env(bucket, wrong).check_bucket()
    ObjectStore.from_env(bucket, right).check_bucket()  # and the right keys still work after the wrong ones

"""The stack's S3 server (moto, standing in for MinIO): one key it accepts, and the buckets.

moto accepts any key until told otherwise; the stack spends its first unauthenticated requests
on one IAM user allowed ``s3:*`` and its key, so every later request must be signed with it,
as with MinIO.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

from mlferry.stack.processes import StackError

ARTIFACTS_BUCKET = "mlflow-artifacts"  # MLflow's own artifact store
MODELS_BUCKET = "mlferry"  # where mlferry publishes; stands in for the team's MinIO bucket
S3_USER = "mlferry"
SETUP_REQUESTS = 3  # CreateUser, PutUserPolicy, CreateAccessKey: then moto checks every signature


def s3_client(url: str, creds: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])


def provision_s3_key(url: str, seed: int) -> tuple[str, str]:
    """Make the one identity the S3 server accepts: IAM user `mlferry`, allowed s3:*, and its key.

    moto checks no credentials for its first INITIAL_NO_AUTH_ACTION_COUNT requests (the stack
    sets S3_SETUP_REQUESTS) and checks every signature after: these three requests spend them.
    moto cannot import a given key; it makes one from its random generator, which its
    /moto-api/seed seeds first, so the seed kept in secrets.env gives the same key at every start
    and shells that exported it keep working. They are plain form POSTs rather than boto3 calls:
    a boto3 IAM client costs more to build than the three requests take, and unsigned requests
    are what moto accepts here (the Authorization header only tells it which service is meant).
    """
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/seed?a={seed}", method="POST"), timeout=30).close()
    policy = json.dumps({"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    answers = [_iam(url, Action="CreateUser", UserName=S3_USER),
               _iam(url, Action="PutUserPolicy", UserName=S3_USER, PolicyName="s3", PolicyDocument=policy),
               _iam(url, Action="CreateAccessKey", UserName=S3_USER)]
    key = answers[-1].find(".//{*}AccessKey")
    if key is None:
        raise StackError(f"the S3 server at {url} answered CreateAccessKey without a key")
    return key.findtext("{*}AccessKeyId", ""), key.findtext("{*}SecretAccessKey", "")


def _iam(url: str, **params: str) -> ET.Element:
    body = urllib.parse.urlencode({**params, "Version": "2010-05-08"}).encode()
    request = urllib.request.Request(url + "/", data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Authorization": "AWS4-HMAC-SHA256 Credential=setup/20000101/us-east-1/iam/aws4_request, "
                         "SignedHeaders=host, Signature=unsigned"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return ET.fromstring(answer.read())
    except urllib.error.HTTPError as err:
        raise StackError(f"the S3 server at {url} refused IAM {params['Action']} while setting up its "
                         f"credentials: HTTP {err.code} {err.read()[:300]!r}") from None


def check_credentials_enforced(url: str, creds: dict[str, str]) -> None:
    """A wrong secret must be refused, or the stack would hide credential mistakes that a real store rejects."""
    from botocore.exceptions import ClientError

    wrong = s3_client(url, {**creds, "AWS_SECRET_ACCESS_KEY": "not-" + creds["AWS_SECRET_ACCESS_KEY"]})
    try:
        wrong.list_buckets()
    except ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
            return
        raise
    raise StackError(f"the S3 server at {url} accepted a wrong secret key: it does not check credentials "
                     f"(is INITIAL_NO_AUTH_ACTION_COUNT honoured by this moto?)")


def create_buckets(client: Any) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACTS_BUCKET, MODELS_BUCKET):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)

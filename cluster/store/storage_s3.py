"""S3Store: the artifact store on `s3://bucket/prefix` (AWS or any S3-compatible endpoint).

Atomicity comes from S3 itself: an object appears only when its single PUT, or its multipart
upload as a whole, has completed. Credentials come only from boto3's own chain (environment,
~/.aws, instance role); nothing of ours holds secrets. The endpoint is `endpoint_url`, else
`$YARD_S3_ENDPOINT_URL`, else boto3's (`$AWS_ENDPOINT_URL`, ~/.aws/config, AWS).

    >>> store = S3Store("s3://my-bucket/yard")                     # doctest: +SKIP
    >>> store.put_bytes("_state/jobs/j1.json", b"{}")              # doctest: +SKIP
    >>> store.list_keys("_state/")                                 # doctest: +SKIP
    ['_state/jobs/j1.json']
"""
from __future__ import annotations

import os
from pathlib import Path

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cluster.store.storage_base import ArtifactStore, StoreError, check_key

ENDPOINT_ENV = "YARD_S3_ENDPOINT_URL"
MIB = 1024 * 1024
_MIN_PART_BYTES = 5 * MIB  # S3's smallest multipart part (all but the last)
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}



_LOADER = None  # botocore's data loader (parsed service models), shared by this process's sessions


def new_session() -> boto3.session.Session:
    """A boto3 session of its own (credentials, config) that reuses this process's parsed service
    models: a new S3 client then costs 0.025 CPU-s instead of 0.11, as botocore parses the S3 model
    once per loader (a job's tasks and status reads open stores often)."""
    global _LOADER
    core = botocore.session.Session()
    if _LOADER is None:
        _LOADER = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core)
    _LOADER.search_paths[:] = list(dict.fromkeys(_LOADER.search_paths))  # boto3 appends its data dir each time
    return session

class S3Store(ArtifactStore):
    list_page_size = 1000  # keys per list_objects_v2 request (S3's own maximum); list_keys follows every page

    def __init__(
        self,
        uri: str,
        endpoint_url: str | None = None,
        multipart_threshold_bytes: int = 64 * MIB,
        max_concurrency: int = 8,
    ):
        if not uri.startswith("s3://"):
            raise StoreError(f"storage uri {uri!r}: expected s3://bucket/prefix")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        prefix = prefix.strip("/")
        if not bucket:
            raise StoreError(f"storage uri {uri!r}: no bucket name")
        if prefix:
            check_key(prefix)
        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3},
            # S3-compatible servers (MinIO, moto, Ceph) rarely resolve bucket.host names
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        try:
            # a session of our own: the client must not share boto3's module-level default
            self.client = new_session().client("s3", endpoint_url=self.endpoint_url, config=config)
        except BotoCoreError as err:
            raise StoreError(f"{self.uri}: cannot set up an S3 client: {err}") from err
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold_bytes,
            multipart_chunksize=max(multipart_threshold_bytes, _MIN_PART_BYTES),
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )

    # --- writes --------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, key, "write") from err

    def put_file(self, key: str, path) -> None:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"{self.uri}: cannot store {key}: no such local file: {src}")
        try:
            self.client.upload_file(str(src), self.bucket, self._object(key), Config=self.transfer)
        except S3UploadFailedError as err:
            # boto3 wraps the ClientError in a message string; the original is the context
            cause = err.__context__ if isinstance(err.__context__, (ClientError, BotoCoreError)) else err
            raise self._error(cause, key, "write") from err
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, key, "write") from err

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, key, "delete") from err

    # --- reads ---------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, key, "read") from err

    def download(self, key: str, path) -> None:
        obj, dest = self._object(key), Path(path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # s3transfer writes a temp file beside `dest` and renames it when done
            self.client.download_file(self.bucket, obj, str(dest), Config=self.transfer)
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, key, "read") from err
        except OSError as err:
            raise StoreError(f"{self.uri}: cannot download {key} to {dest}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object(key))
            return True
        except ClientError as err:
            if _code(err) in _MISSING:
                return False
            raise self._error(err, key, "read") from err
        except BotoCoreError as err:
            raise self._error(err, key, "read") from err

    def list_keys(self, prefix: str) -> list[str]:
        check_key(prefix, prefix=True)
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                keys.extend(obj["Key"][len(base):] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, prefix, "list") from err
        # folder placeholders ("a/b/") made by consoles are not artifacts
        return sorted(k for k in keys if k and not k.endswith("/"))

    # --- helpers -------------------------------------------------------------------------------
    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, err: Exception, key: str, action: str) -> StoreError:
        """One line naming the store and key; the boto error stays chained for debugging."""
        if isinstance(err, NoCredentialsError):
            hint = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            return StoreError(f"{self.uri}: no AWS credentials ({hint})")
        if isinstance(err, BotoCoreError):  # unreachable endpoint, timeouts, bad config
            where = self.endpoint_url or "the AWS endpoint"
            return StoreError(f"{self.uri}: cannot reach {where} to {action} {key}: {_one_line(err)}")
        code = _code(err)
        if code == "NoSuchBucket" or (code in _MISSING and not self._bucket_exists()):
            return StoreError(f"{self.uri}: bucket does not exist")
        if code in _MISSING:
            return StoreError(f"{self.uri}: no such artifact: {key}")
        if code in _DENIED:
            return StoreError(f"{self.uri}: access denied to {action} {key} ({code}; check the AWS credentials)")
        return StoreError(f"{self.uri}: cannot {action} {key}: {code}: {_one_line(err)}")

    def _bucket_exists(self) -> bool:
        """HEAD answers a bare 404 for a missing key and a missing bucket alike; tell them apart."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as err:
            return _code(err) not in _MISSING | {"NoSuchBucket"}
        except BotoCoreError:
            return True  # unknown: report the key, not a guess about the bucket


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", "")) if isinstance(err, ClientError) else ""


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())

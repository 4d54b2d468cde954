"""pytest plugin: a real S3 endpoint on loopback (moto's server mode), for S3Store tests.

Tests talk to it over HTTP through boto3, exactly as against AWS: nothing in boto3 is patched.

    def test_roundtrip(s3_uri):
        uri, endpoint_url = s3_uri          # ("s3://yard-test-3fa2c1d0/artifacts", "http://127.0.0.1:PORT")
        store = S3Store(uri, endpoint_url=endpoint_url)
"""
from __future__ import annotations

import logging
import os
import secrets
from contextlib import contextmanager
from typing import Iterator

import pytest

from cluster.store.storage_s3 import new_session

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # keep the developer's ~/.aws (profiles, endpoints, real keys) out of the tests
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# set in a developer's shell, these would override the fake credentials or the endpoint
CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "YARD_S3_ENDPOINT_URL",
)


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free loopback port with fake credentials in the environment;
    yield its endpoint URL; stop it and restore the environment afterwards."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in (*FAKE_ENV, *CLEARED_ENV)}
    os.environ.update(FAKE_ENV)
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    # werkzeug logs every request at INFO to stderr otherwise
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def create_bucket(endpoint_url: str) -> str:
    """A new empty bucket with a unique name on the server at `endpoint_url`."""
    bucket = f"yard-test-{secrets.token_hex(4)}"
    new_session().client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server shared by the session."""
    with moto_s3_server() as endpoint_url:
        yield endpoint_url


@pytest.fixture
def s3_uri(s3_server: str) -> tuple[str, str]:
    """(uri, endpoint_url) of a fresh bucket, e.g. ("s3://yard-test-3fa2c1d0/artifacts", "http://127.0.0.1:PORT")."""
    return f"s3://{create_bucket(s3_server)}/artifacts", s3_server

"""cluster/store/storage_s3.py without a server: URIs parsed, the endpoint chosen, and boto's errors
phrased as one line naming the store and key. Everything a real S3 API can answer (keys, listing,
a missing key or bucket) is tested against moto's server over HTTP in test_storage.py; here only
what it cannot produce on demand: a throttling reply (botocore's Stubber stands in for it, nothing
is sent) and missing credentials."""
import pytest
from botocore.exceptions import NoCredentialsError
from botocore.stub import Stubber

from cluster.store.storage import StoreError
from cluster.store.storage_s3 import ENDPOINT_ENV, S3Store
from tests.plugins.s3 import CLEARED_ENV, FAKE_ENV

NOWHERE = "http://127.0.0.1:1"  # never contacted: every reply below is stubbed


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch):
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)


def test_uri_splits_into_bucket_and_prefix():
    store = S3Store("s3://bkt/a/b/", endpoint_url=NOWHERE)
    assert (store.bucket, store.prefix, store.uri) == ("bkt", "a/b", "s3://bkt/a/b")
    bare = S3Store("s3://bkt", endpoint_url=NOWHERE)
    assert (bare.bucket, bare.prefix, bare.uri) == ("bkt", "", "s3://bkt")


def test_endpoint_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:2")
    assert S3Store("s3://bkt").endpoint_url == "http://127.0.0.1:2"
    assert S3Store("s3://bkt", endpoint_url=NOWHERE).endpoint_url == NOWHERE
    monkeypatch.delenv(ENDPOINT_ENV)
    assert S3Store("s3://bkt").endpoint_url is None  # boto3's own chain decides


def test_not_an_s3_uri_is_refused():
    for bad in ("/local/dir", "gs://bkt/p"):
        with pytest.raises(StoreError, match="expected s3://bucket/prefix"):
            S3Store(bad, endpoint_url=NOWHERE)


def test_other_errors_name_action_key_and_code_on_one_line():
    store = S3Store("s3://bkt/p", endpoint_url=NOWHERE)
    with Stubber(store.client) as stub:
        stub.add_client_error("delete_object", service_error_code="SlowDown", service_message="Please\nreduce",
                              http_status_code=503)
        with pytest.raises(StoreError) as e:
            store._delete("dna/a.json")
    assert str(e.value).startswith("s3://bkt/p: cannot delete dna/a.json: SlowDown: ") and "\n" not in str(e.value)


def test_no_credentials_says_which_variables_to_set():
    store = S3Store("s3://bkt/p", endpoint_url=NOWHERE)
    err = store._error(NoCredentialsError(), "a.json", "read")
    assert str(err) == ("s3://bkt/p: no AWS credentials "
                        "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")


def test_put_file_of_a_missing_source_names_key_and_file(tmp_path):
    store = S3Store("s3://bkt/p", endpoint_url=NOWHERE)
    with pytest.raises(StoreError, match=r"cannot store a.bin: no such local file: .*missing.bin"):
        store.put_file("a.bin", tmp_path / "missing.bin")


def test_s3_bad_uri():
    for bad in ("s3://", "s3:///prefix", "s3://bkt/../up"):
        with pytest.raises(StoreError):
            S3Store(bad, endpoint_url="http://127.0.0.1:1")


def test_stores_share_the_parsed_s3_model_but_each_reads_its_own_credentials(monkeypatch):
    """Each store's client has a session of its own (its credentials come from the environment as
    it is then), while botocore's parsed service models are loaded once per process."""
    first = S3Store("s3://bkt", endpoint_url=NOWHERE)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second-key")
    second = S3Store("s3://bkt", endpoint_url=NOWHERE)
    assert first.client.meta.service_model is not None
    assert first.client._loader is second.client._loader  # the shared, already parsed models
    assert len(second.client._loader.search_paths) == len(set(second.client._loader.search_paths))
    keys = [s.client._request_signer._credentials.get_frozen_credentials().access_key for s in (first, second)]
    assert keys == [FAKE_ENV["AWS_ACCESS_KEY_ID"], "second-key"]

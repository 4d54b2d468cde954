"""cluster/store/storage_local.py: LocalStore writes whole files or nothing (temp file + rename), listings
never show temp files, and every failure is a one-line StoreError naming the key. Behaviour shared
with S3Store is tested on both backends in test_storage.py."""
import os

import pytest

from cluster.store.storage import StoreError
from cluster.store.storage_local import LocalStore


def test_roundtrip_creates_folders_and_overwrites_in_place(tmp_path):
    store = LocalStore(tmp_path / "yard")
    store.put_bytes("dna/a/notes.txt", b"v1")
    store.put_bytes("dna/a/notes.txt", b"v2")
    assert (tmp_path / "yard" / "dna" / "a" / "notes.txt").read_bytes() == b"v2"
    assert store.get_bytes("dna/a/notes.txt") == b"v2" and store.exists("dna/a/notes.txt")
    assert store.uri == str(tmp_path / "yard")


def test_list_keys_filters_on_a_partial_last_part(tmp_path):
    store = LocalStore(tmp_path)
    for key in ("dna/a/x.json", "dna/ab/y.json", "dna/b/z.json", "top.txt"):
        store.put_bytes(key, b"")
    assert store.list_keys("dna/a") == ["dna/a/x.json", "dna/ab/y.json"]
    assert store.list_keys("dna/a/") == ["dna/a/x.json"]
    assert store.list_keys("") == ["dna/a/x.json", "dna/ab/y.json", "dna/b/z.json", "top.txt"]
    assert store.list_keys("nothing/") == []


def test_a_folder_is_not_an_artifact(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("dna/a/x.json", b"{}")
    assert not store.exists("dna/a")
    with pytest.raises(StoreError, match=r"no such artifact: dna/a$"):
        store.get_bytes("dna/a")


def test_put_file_of_a_missing_source_names_key_and_file(tmp_path):
    store = LocalStore(tmp_path / "yard")
    with pytest.raises(StoreError, match=r"cannot store dna/a/w.bin: no such local file: .*missing.bin"):
        store.put_file("dna/a/w.bin", tmp_path / "missing.bin")


def test_download_copies_into_new_folders(tmp_path):
    store = LocalStore(tmp_path / "yard")
    store.put_bytes("blobs/w.bin", b"weights")
    dest = tmp_path / "out" / "deep" / "w.bin"
    store.download("blobs/w.bin", dest)
    assert dest.read_bytes() == b"weights"
    assert os.listdir(dest.parent) == ["w.bin"]  # no temp file left beside it


# --- atomicity (local; S3 gets it from PUT / completed multipart) --------------------------------
def test_local_failed_replace_leaves_nothing_visible(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "yard")
    store.put_bytes("dna/a/old.json", b"v1")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError, match="dna/a/new.json.*No space left"):
        store.put_bytes("dna/a/new.json", b"v2")
    with pytest.raises(StoreError, match="dna/a/old.json"):
        store.put_bytes("dna/a/old.json", b"v2")
    with pytest.raises(StoreError, match="dna/a/file.bin"):
        store.put_file("dna/a/file.bin", src)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "yard" / "dna" / "a")) == ["old.json"]  # no temp file left
    assert store.get_bytes("dna/a/old.json") == b"v1"
    assert not store.exists("dna/a/new.json") and store.list_keys("dna/") == ["dna/a/old.json"]


def test_local_partial_copy_is_never_visible(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "yard")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)

    def half_copy(source, dest):
        with open(dest, "wb") as f:
            f.write(b"x" * 5000)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("cluster.store.storage_local.shutil.copyfile", half_copy)
    with pytest.raises(StoreError, match="file.bin"):
        store.put_file("dna/a/file.bin", src)
    assert os.listdir(tmp_path / "yard" / "dna" / "a") == []
    assert not store.exists("dna/a/file.bin")


def test_local_listing_skips_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("dna/a/x.json", b"{}")
    (tmp_path / "dna" / "a" / ".tmp-x.json-deadbeef").write_bytes(b"{")  # a writer mid-flight
    assert store.list_keys("") == ["dna/a/x.json"]

"""LocalStore: the artifact store on a local (or shared, e.g. NFS) directory.

Keys map to files under the root. Every write goes to a `.tmp-*` file in the key's own directory
and is then `os.replace`d into place, so a reader sees either nothing or the whole file, and a
listing never shows the temp files.

    >>> store = LocalStore(tmp_dir)                        # doctest: +SKIP
    >>> store.put_bytes("dna/llama-a/notes.txt", b"hi")    # doctest: +SKIP
    >>> store.list_keys("dna/")                            # doctest: +SKIP
    ['dna/llama-a/notes.txt']
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from cluster.store.storage_base import TEMP_PREFIX, ArtifactStore, StoreError, check_key


class LocalStore(ArtifactStore):
    def __init__(self, root: str | os.PathLike = ".yard"):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    # --- writes --------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace_into(self._path(key), lambda tmp: tmp.write_bytes(data), key)

    def put_file(self, key: str, path) -> None:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"{self.uri}: cannot store {key}: no such local file: {src}")
        self._replace_into(self._path(key), lambda tmp: shutil.copyfile(src, tmp), key)

    def download(self, key: str, path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.uri}: no such artifact: {key}")
        self._replace_into(Path(path), lambda tmp: shutil.copyfile(src, tmp), key)

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"{self.uri}: cannot delete {key}: {err.strerror or err}") from err

    # --- reads ---------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoreError(f"{self.uri}: no such artifact: {key}") from None
        except OSError as err:
            raise StoreError(f"{self.uri}: cannot read {key}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        check_key(prefix, prefix=True)
        # walk only the deepest folder the prefix names, then filter on the partial last part
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    # --- helpers -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _replace_into(self, dest: Path, write: Callable[[Path], None], key: str) -> None:
        """Run `write(tmp)` on a temp file beside `dest`, fsync it, then rename it over `dest`.
        On any failure the temp file is removed and `dest` is left as it was."""
        tmp = dest.parent / f"{TEMP_PREFIX}{dest.name}-{secrets.token_hex(4)}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: never share a temp file; mode 0o666 lets the umask decide, as open() does
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as err:
            raise StoreError(f"{self.uri}: cannot write {key}: {err.strerror or err}") from err
        try:
            write(tmp)
            # fsync before the rename, so after a crash the key holds the whole file or nothing
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise StoreError(f"{self.uri}: cannot write {key}: {err.strerror or err}") from err
            raise

"""Where a store lives: a local folder, or an fsspec URL (``s3://``, ``gs://``, ``file://``, ...).

:class:`StoreLocation` is the one place that touches the store's files outside Zarr (the feature
table, ``quality.json``, the build's ``_progress`` records, removal, sizes). A local folder keeps the
plain-filesystem behaviour (temp file + rename, ``shutil.rmtree``); a URL goes through fsspec and
Zarr's own ``FsspecStore``.

**Credentials** never pass through here: fsspec and the cloud SDK find them the usual way —
environment variables (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server,
``GOOGLE_APPLICATION_CREDENTIALS``), profile files (``~/.aws/credentials``), instance/workload
identity, or fsspec's own config (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/*.json``). A URL
with credentials in it (``s3://KEY:SECRET@bucket/...``) is refused, so none ends up in a log, the
store's attrs or a run folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from neurocache.errors import InputError
from neurocache.names import bad_name, shown_name

#: ``scheme://user:password@...``: credentials in a URL (refused).
_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@")


class StoreURL(str):
    """A remote store's URL where a local store has a ``Path``: ``.name`` and ``/ member`` work alike."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, member: str) -> StoreURL:
        return StoreURL(f"{self.rstrip('/')}/{member}")


def is_url(store: str | Path) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a ``file://`` URL is a local folder)."""
    s = str(store)
    return "://" in s and not s.startswith("file://")


def store_address(store: str | Path) -> str:
    """How to name the store to another process or machine: a URL unchanged, a local path made absolute."""
    s = str(store)
    if is_url(s):
        return s.rstrip("/")
    s = s.removeprefix("file://")
    return str(Path(s).resolve())


class StoreLocation:
    """A store's root: ``StoreLocation("store.zarr")`` or ``StoreLocation("s3://bucket/store.zarr")``.

    Member names are relative to the root and use ``/`` (``"_progress/batch_000001.parquet"``).
    """

    def __init__(self, store: str | Path | StoreLocation) -> None:
        if isinstance(store, StoreLocation):
            self.__dict__.update(store.__dict__)
            return
        s = str(store)
        if bad_name(s):
            raise InputError(
                f"store path {shown_name(s)} is not valid UTF-8 (the bytes shown as \\xNN): Zarr and Parquet need a "
                "UTF-8 path; choose another --store path (a name in UTF-8)"
            )
        if _USERINFO.match(s):
            raise InputError(
                "credentials in a store URL are refused (they would end up in logs and run folders): "
                "use the environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE) or an fsspec config"
            )
        s = s.removeprefix("file://")
        self.remote = is_url(s)
        if self.remote:
            from fsspec.core import url_to_fs

            self.url = s.rstrip("/")
            # No listing cache: other processes (Dask workers, Zarr's own async instance) write here too.
            try:
                self.fs, self.root = url_to_fs(self.url, use_listings_cache=False)
            except (ImportError, ValueError) as e:  # a protocol fsspec does not know, or its backend not installed
                raise InputError(f"store {self.url} cannot be opened: {e}; check the URL's protocol or install its fsspec "
                                 "backend (s3fs for s3://, gcsfs for gs://), or use a local --store path") from None
            self.root = self.root.rstrip("/")
            self.path: Path | None = None
            self.display: Path | StoreURL = StoreURL(self.url)
        else:
            self.path = Path(s)
            self.url = str(self.path)
            self.display = self.path
            self.fs = None
            self.root = str(self.path)

    # -- naming --------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StoreLocation({self.url!r})"

    def __truediv__(self, name: str) -> str:
        """The member as a path (local) or a URL (remote), e.g. for messages."""
        return str(self.path / name) if self.path is not None else f"{self.url}/{name}"

    def _p(self, name: str = "") -> str:
        if self.path is not None:
            return str(self.path / name) if name else str(self.path)
        return f"{self.root}/{name}" if name else self.root

    # -- queries -------------------------------------------------------------------------------
    def exists(self, name: str = "") -> bool:
        if self.path is not None:
            return (self.path / name).exists() if name else self.path.exists()
        return bool(self.fs.exists(self._p(name)))

    def isfile(self, name: str) -> bool:
        if self.path is not None:
            return (self.path / name).is_file()
        return bool(self.fs.isfile(self._p(name)))

    def isdir(self, name: str = "") -> bool:
        """A folder (local), or a prefix with at least one object under it (remote)."""
        if self.path is not None:
            return (self.path / name).is_dir() if name else self.path.is_dir()
        return bool(self.fs.isdir(self._p(name)))

    def listdir(self, name: str = "") -> list[str]:
        """Names directly under ``name`` (files and folders); [] when there is nothing."""
        if self.path is not None:
            d = self.path / name if name else self.path
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._p(name), detail=False))
        except FileNotFoundError:
            return []

    def size(self, name: str = "") -> int:
        """Bytes of every file under ``name`` (the whole store by default)."""
        if self.path is not None:
            total = 0
            for root, _dirs, files in os.walk(self.path / name if name else self.path):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(root, f))
                    except OSError:
                        pass
            return total
        try:
            return int(sum(self.fs.du(self._p(name), total=False).values()))
        except FileNotFoundError:
            return 0

    # -- reading and writing -------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        if self.path is not None:
            return (self.path / name).read_bytes()
        return self.fs.cat_file(self._p(name))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_bytes(self, name: str, data: bytes, *, atomic: bool = True) -> None:
        """Write a whole member: locally through a temp file + rename (``atomic``), on an object store
        with one PUT (atomic by itself)."""
        if self.path is not None:
            p = self.path / name
            if not atomic:
                p.write_bytes(data)
                return
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)
            return
        self.fs.pipe_file(self._p(name), data)

    def put(self, name: str, data: bytes) -> None:
        """Write a whole member, creating its folders (local); not atomic locally (a Zarr chunk/shard file)."""
        if self.path is not None:
            p = self.path / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            return
        self.fs.pipe_file(self._p(name), data)

    def copy(self, src: str, dst: str) -> None:
        """Copy member ``src`` to ``dst`` (replacing it), creating folders: locally a hard link when the
        filesystem allows one (no bytes move; ``src`` stays valid), else a file copy; on an object store
        a server-side copy."""
        if self.path is not None:
            s, d = self.path / src, self.path / dst
            d.parent.mkdir(parents=True, exist_ok=True)
            d.unlink(missing_ok=True)
            try:
                os.link(s, d)
            except OSError:
                shutil.copyfile(s, d)
            return
        self.fs.copy(self._p(src), self._p(dst))

    def write_text(self, name: str, text: str, *, atomic: bool = True) -> None:
        self.write_bytes(name, text.encode(), atomic=atomic)

    def write_json(self, name: str, obj: Any, default=None) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True, default=default))

    def read_parquet(self, name: str, columns: list[str] | None = None):
        import pandas as pd

        if self.path is not None:
            return pd.read_parquet(self.path / name, columns=columns)
        with self.fs.open(self._p(name), "rb") as f:
            return pd.read_parquet(f, columns=columns)

    def write_parquet(self, name: str, frame) -> bytes:
        """Write ``frame`` (no index) atomically; returns the Parquet bytes written."""
        import io

        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        data = buf.getvalue()
        self.write_bytes(name, data)
        return data

    def parquet_schema_names(self, name: str) -> list[str]:
        import pyarrow.parquet as pq

        if self.path is not None:
            return list(pq.read_schema(self.path / name).names)
        with self.fs.open(self._p(name), "rb") as f:
            return list(pq.read_schema(f).names)

    def mkdir(self, name: str) -> None:
        """A folder (local); nothing on an object store, where prefixes need no creation."""
        if self.path is not None:
            (self.path / name).mkdir(parents=True, exist_ok=True)

    def rm(self, name: str = "") -> None:
        """Remove ``name`` (a file or a whole folder/prefix; the root when empty); missing is fine."""
        if self.path is not None:
            p = self.path / name if name else self.path
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            return
        try:
            self.fs.rm(self._p(name), recursive=True)
        except FileNotFoundError:
            pass

    # -- zarr ----------------------------------------------------------------------------------
    def zarr_store(self, read_only: bool = False):
        """What to hand to ``zarr.open_group``/``open_array``: the folder path, or an ``FsspecStore``."""
        if self.path is not None:
            return str(self.path)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, read_only=read_only, storage_options={"use_listings_cache": False})

    def member_store(self, name: str, read_only: bool = False):
        """:meth:`zarr_store` of a member (an array inside the group)."""
        if self.path is not None:
            return str(self.path / name)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(f"{self.url}/{name}", read_only=read_only, storage_options={"use_listings_cache": False})

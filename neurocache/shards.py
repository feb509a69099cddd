"""Shard files of the store's image arrays, written and re-packed without Zarr's per-chunk machinery.

The build writes whole shards of ``_staging`` and copies encoded slices from ``_staging`` into
``images``. Through Zarr each slice costs a thread hand-off and an async round trip besides its
compression (about as much again as the zstd-1 encode of a 256 x 256 slice); here a shard is made in
one pass. Measured: with Zarr's API writing the staging shards and compaction's output shards, a
build of 480 synthetic 512-px files took 2.27 s of CPU instead of 1.45 s (``workers=1``, min of 5):
Zarr's sharded writes were ~36 % of the build, well above the 10 % that would let Zarr write them.
The bytes are exactly what Zarr writes (tests/test_fast_build.py compares them file for file, and
reads every shard the build wrote back through Zarr against a store Zarr's API wrote), and anything
Zarr reads back: a Zarr v3 shard (``sharding_indexed``, index at the end) is its
chunks' encoded bytes in chunk order, then an index of (offset, length) uint64 little-endian
pairs, one per chunk (``2**64 - 1`` twice for an absent chunk), then the index's crc32c.

:meth:`ShardLayout.of` accepts only the layout :func:`neurocache.store.create_image_array` makes
(int16, one slice per chunk, bytes + blosc inner codecs, bytes + crc32c index at the end, default
chunk keys); for any other array document it returns None and callers go through Zarr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Index entry (offset and length) of an absent chunk.
NO_CHUNK = np.uint64(2**64 - 1)

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def crc32c(data: bytes) -> bytes:
    """The crc32c checksum Zarr appends to a shard index (4 bytes, little endian)."""
    import google_crc32c

    return int(google_crc32c.value(data)).to_bytes(4, "little")


@dataclass(frozen=True)
class ShardLayout:
    """One array's shard geometry and slice codec, from its ``zarr.json``.

    Attributes:
        shard: slices per shard (chunks per shard index).
        side: (rows, cols) of a slice.
        blosc: the inner blosc codec's configuration.
        fill: the array's fill value (slices equal to it everywhere are not stored).
        separator: chunk key separator (``c/<i>/0/0`` with ``/``).
    """

    shard: int
    side: tuple[int, int]
    blosc: tuple[tuple[str, Any], ...]
    fill: int
    separator: str

    @classmethod
    def of(cls, document: bytes | str | dict) -> ShardLayout | None:
        """The layout of an array's ``zarr.json`` document, or None when it is not the one we write."""
        try:
            meta = json.loads(document) if isinstance(document, (bytes, str)) else document
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("data_type") != "int16":
                return None
            if meta.get("storage_transformers") not in (None, []):
                return None
            shape = list(meta["shape"])
            grid = meta["chunk_grid"]
            if grid.get("name") != "regular" or len(shape) != 3:
                return None
            shard_shape = list(grid["configuration"]["chunk_shape"])
            keys = meta["chunk_key_encoding"]
            if keys.get("name") != "default":
                return None
            sep = (keys.get("configuration") or {}).get("separator", "/")
            codecs = meta["codecs"]
            if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
                return None
            conf = codecs[0]["configuration"]
            inner = conf["codecs"]
            side = shape[1:]
            ok = (
                shard_shape[1:] == side
                and list(conf["chunk_shape"]) == [1, *side]
                and conf.get("index_location", "end") == "end"
                and conf["index_codecs"] == _INDEX_CODECS
                and len(inner) == 2
                and inner[0] == {"name": "bytes", "configuration": {"endian": "little"}}
                and inner[1].get("name") == "blosc"
            )
            if not ok:
                return None
            b = dict(inner[1]["configuration"])
            if set(b) != {"typesize", "cname", "clevel", "shuffle", "blocksize"} or b["shuffle"] not in _SHUFFLES:
                return None
            fill = meta["fill_value"]
            if not isinstance(fill, int):
                return None
            return cls(int(shard_shape[0]), (int(side[0]), int(side[1])), tuple(sorted(b.items())), int(fill), str(sep))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    def key(self, i: int) -> str:
        """Key of shard ``i`` relative to the array (``c/<i>/0/0``)."""
        return self.separator.join(["c", str(i), "0", "0"])

    def same_chunks(self, other: ShardLayout) -> bool:
        """Whether a slice's encoded bytes mean the same in both arrays (shard sizes may differ)."""
        return (self.side, self.blosc, self.fill) == (other.side, other.blosc, other.fill)

    def _codec(self):
        """numcodecs' Blosc configured as Zarr's ``BloscCodec`` configures it (typesize only from
        numcodecs 0.16 on; before, Zarr's encode of raw bytes let blosc see a typesize of 1)."""
        import numcodecs
        from numcodecs import Blosc
        from packaging.version import Version

        b = dict(self.blosc)
        config = {"cname": b["cname"], "clevel": b["clevel"], "shuffle": _SHUFFLES[b["shuffle"]], "blocksize": b["blocksize"]}
        if Version(numcodecs.__version__) >= Version("0.16.0"):
            config["typesize"] = b["typesize"]
        return Blosc.from_config(config)

    def encode(self, stack: np.ndarray, *, write_empty: bool = False) -> bytes | None:
        """The shard file holding ``stack`` (k <= shard slices, int16) in its first k chunks; None when
        every slice equals the fill value (Zarr then writes no shard)."""
        if stack.ndim != 3 or tuple(stack.shape[1:]) != self.side or len(stack) > self.shard:
            raise ValueError(f"a shard holds up to {self.shard} slices of {self.side}, got {stack.shape}")
        codec = self._codec()
        data = np.ascontiguousarray(stack, dtype="<i2")
        chunks: list[bytes | None] = []
        for sl in data:
            if not write_empty and sl[0, 0] == self.fill and not np.any(sl != self.fill):
                chunks.append(None)
            else:
                chunks.append(codec.encode(sl.reshape(-1).view(np.uint8)))
        return self.pack(chunks)

    def pack(self, chunks: Sequence[bytes | memoryview | None]) -> bytes | None:
        """Shard file of encoded chunks (None = absent) placed in its first ``len(chunks)`` chunks."""
        index = np.full((self.shard, 2), NO_CHUNK, dtype="<u8")
        parts: list[bytes | memoryview] = []
        pos = 0
        for k, c in enumerate(chunks):
            if c is None or len(c) == 0:
                continue
            parts.append(c)
            index[k] = (pos, len(c))
            pos += len(c)
        if not parts:
            return None
        tail = index.tobytes()
        return b"".join([*parts, tail, crc32c(tail)])

    def decode(self, blob: bytes | None, n: int, what: str = "shard") -> np.ndarray:
        """The first ``n`` slices of a shard file as int16 (n, rows, cols): what Zarr reads back
        (absent chunks, or ``blob`` None for an absent shard, are the fill value), decoded straight
        into the output by blosc, one call per slice, no Zarr machinery (ValueError when damaged)."""
        out = np.full((n, *self.side), self.fill, dtype="<i2")
        if blob is None:
            return out
        index = self.index(blob, what)
        codec = self._codec()
        view = memoryview(blob)
        for k in range(min(n, self.shard)):
            off, size = index[k]
            if off != NO_CHUNK:
                codec.decode(view[int(off) : int(off) + int(size)], out=out[k].reshape(-1).view(np.uint8))
        return out

    def index(self, blob: bytes, what: str = "shard") -> np.ndarray:
        """The (shard, 2) offset/length index of a shard file, checked (ValueError when damaged)."""
        size = 16 * self.shard
        if len(blob) < size + 4:
            raise ValueError(f"{what} is truncated ({len(blob)} bytes)")
        tail = blob[-(size + 4) : -4]
        if crc32c(tail) != blob[-4:]:
            raise ValueError(f"{what} has a corrupt index (crc32c mismatch)")
        index = np.frombuffer(tail, dtype="<u8").reshape(self.shard, 2)
        full = index[:, 0] != NO_CHUNK
        if np.any(index[full, 0] + index[full, 1] > len(blob) - size - 4):
            raise ValueError(f"{what} has an index pointing past its data")
        return index

"""Preprocess one file in a separate Python process, so a decoder that crashes the interpreter
(a segfault or abort inside a C/Rust codec on a damaged stream) costs one quarantine row, not the build.

Used only for *suspects*: a file that a build process was decoding when it died (see the in-flight
journal in :mod:`neurocache.build`). The child writes its results as JSON + ``.npy`` (no pickle):
``python -m neurocache.isolate FILE PREP_JSON KEY_HEX OUT_DIR``.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from neurocache.config import PrepConfig
from neurocache.names import shown_name
from neurocache.preprocess import empty_row, file_digest

#: Seconds one isolated decode may take before it counts as a crash (a hung decoder).
TIMEOUT_S = 300


def preprocess_isolated(
    path: str | Path, cfg: PrepConfig, key: bytes, scratch: Path, command: list[str] | None = None
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """:func:`neurocache.preprocess.preprocess_file` in a child process; a child that dies gives a
    ``decoder_crash`` row (with the signal) instead of taking this process down.

    ``command`` starts the child (default ``python -m neurocache.isolate``; the tests pass one that
    crashes on purpose, :class:`neurocache.build.hooks.BuildHooks`); the arguments are appended.
    """
    path = Path(path)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        cmd = [*(command or [sys.executable, "-m", "neurocache.isolate"]), str(path), json.dumps(cfg.to_dict()), key.hex(), d]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = None
        row_file, img_file = Path(d) / "row.json", Path(d) / "image.npy"
        if rc == 0 and row_file.is_file():
            row = json.loads(row_file.read_text())
            row = {k: (float("nan") if v is None and isinstance(empty_row().get(k), float) else v) for k, v in row.items()}
            image = np.load(img_file, allow_pickle=False) if img_file.is_file() else None
            return image, row
    row = empty_row()
    try:
        row["file_bytes"], row["content_hash"] = file_digest(path)
    except OSError:
        pass
    if rc is None:
        why = f"did not finish within {TIMEOUT_S} s"
    elif rc < 0:
        try:
            why = f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            why = f"was killed by signal {-rc}"
    else:
        why = f"exited with status {rc}"
    row.update(status="quarantined", reason="decoder_crash", detail=f"{shown_name(path.name)}: the decoding process {why}")
    return None, row


def main(argv: list[str]) -> int:
    """The child: preprocess FILE, write ``row.json`` (+ ``image.npy``) into OUT_DIR; exit status 0."""
    from neurocache.preprocess import preprocess_file

    path, prep, key_hex, out = argv
    image, row = preprocess_file(path, PrepConfig.from_dict(json.loads(prep)), bytes.fromhex(key_hex))
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    if image is not None:
        np.save(Path(out) / "image.npy", image, allow_pickle=False)
    (Path(out) / "row.json").write_text(json.dumps(clean, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

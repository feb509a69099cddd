"""Points a build passes, where the tests inject faults (``tests/faults.py``); by default nothing happens.

Production code never reads a test switch from the environment: a test hands a :class:`BuildHooks`
subclass to :func:`neurocache.build.build_store` (``hooks=``), or starts the command line through a
launcher that does. The object travels with each task to the worker processes (pickled), so a
subclass holds plain data only and must be importable there.
"""

from __future__ import annotations

import sys

#: Where :meth:`BuildHooks.reached` is called, in build order: after each decoded file; after a
#: batch's images, then after its commit record; compaction's start, after each ``images`` shard;
#: after ``features.parquet`` + ``quality.json``; after ``complete: true``.
POINTS = ("file", "batch_images", "batch", "compact_start", "compact", "features", "complete")


class BuildHooks:
    """The build's test hooks; this base class does nothing."""

    def reached(self, point: str) -> None:
        """Called each time the process passes ``point`` (one of :data:`POINTS`)."""

    def decoding(self, path: str) -> None:
        """Called in the decoding process just before the file ``path`` is decoded."""

    def isolate_command(self) -> list[str]:
        """The command that decodes one file in a child process (:mod:`neurocache.isolate` appends
        its arguments: FILE PREP_JSON KEY_HEX OUT_DIR)."""
        return [sys.executable, "-m", "neurocache.isolate"]


NO_HOOKS = BuildHooks()

"""Fault injection for the build tests: hooks that SIGKILL or SIGSEGV a real build at chosen points.

* In-process: ``build_store(..., hooks=Faults(kill="batch:3"))``.
* The command line, as a subprocess: :func:`cli_command` gives ``python tests/faults.py [--kill
  POINT:N] [--kill-once POINT:N:MARKER] [--crash-on NAME] -- <neurocache arguments>``, which runs
  ``neurocache.cli.main`` with ``build_store`` given these hooks.

``kill="POINT:N"`` SIGKILLs the process the N-th time it passes POINT (counted per process, as a
build's tasks in one worker process share the count); ``kill_once="POINT:N:MARKER"`` does the same
only in the first process that gets there and creates the file MARKER (one Dask worker dies once);
``crash_on=NAME`` makes decoding the file NAME segfault, in a worker and in the isolated child
process that decodes it again (a codec that crashes on one damaged file).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from neurocache.build.hooks import BuildHooks

_COUNTS: dict[str, int] = {}  # per process: how many times each point was passed


@dataclass
class Faults(BuildHooks):
    kill: str | None = None
    kill_once: str | None = None
    crash_on: str | None = None

    def reached(self, point: str) -> None:
        if self.kill_once:
            name, n, marker = self.kill_once.split(":", 2)
            if name == point and _count(f"once:{point}") >= int(n or 1):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
        if self.kill:
            name, _, n = self.kill.partition(":")
            if name == point and _count(point) >= int(n or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    def decoding(self, path: str) -> None:
        if self.crash_on is not None and Path(path).name == self.crash_on:
            os.kill(os.getpid(), signal.SIGSEGV)

    def isolate_command(self) -> list[str]:
        if self.crash_on is None:
            return super().isolate_command()
        return [sys.executable, str(Path(__file__).resolve()), "--crash-on", self.crash_on, "--isolate", "--"]


def _count(key: str) -> int:
    _COUNTS[key] = _COUNTS.get(key, 0) + 1
    return _COUNTS[key]


def cli_command(*args: str, kill: str | None = None, kill_once: str | None = None, crash_on: str | None = None) -> list[str]:
    """The command running ``neurocache ARGS...`` with these faults injected into its build."""
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in (("kill", kill), ("kill_once", kill_once), ("crash_on", crash_on)) if v]
    return [sys.executable, str(Path(__file__).resolve()), *opts, "--", *args]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="faults")
    p.add_argument("--kill")
    p.add_argument("--kill-once")
    p.add_argument("--crash-on")
    p.add_argument("--isolate", action="store_true", help="run neurocache.isolate's child instead of the CLI")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    faults = Faults(kill=a.kill, kill_once=a.kill_once, crash_on=a.crash_on)
    if a.isolate:
        from neurocache import isolate

        faults.decoding(rest[0])
        return isolate.main(rest)
    import neurocache.build
    from neurocache.cli import main as cli_main

    neurocache.build.build_store = functools.partial(neurocache.build.build_store, hooks=faults)
    return cli_main(rest)


if __name__ == "__main__":
    # Run as `faults.main`, so the hooks pickle as `faults.Faults` (this folder is sys.path[0], and
    # worker processes get this sys.path), not as a class of `__main__`.
    import faults as _faults

    sys.exit(_faults.main(sys.argv[1:]))

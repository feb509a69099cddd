"""The one family of user errors: what the command lines print as one message instead of a traceback.

* :class:`UserError`: bad input, config, store or run. The ``neurocache`` command line catches it
  (and only it) and prints ``neurocache <command>: error: <message>``, exit status
  :attr:`UserError.exit_code`; ``python -m neurocache.notebook`` does the same for its errors.
  Anything else is a bug (or the environment failing) and keeps its traceback.
* Each user-facing error derives from it *and* from the builtin it always was (``ValueError``,
  ``RuntimeError``), so ``except ValueError`` callers keep working:
  :class:`neurocache.config.ConfigError`, :class:`InputError` (also ``neurocache.inputs.InputError``),
  :class:`neurocache.store.StoreError`, :class:`neurocache.build.state.BuildError`,
  :class:`neurocache.execution.ClusterError`, :class:`neurocache.notebook.NotebookError`.

A message names the file, key or value at fault and the fix, so the one line is enough to act on.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, config, store or run: the CLIs print its message in one line; anything else keeps its traceback.

    Attributes:
        exit_code: the command line's exit status for this error (2: the request cannot be served as
            given, like argparse's usage errors; 1: the run itself failed, e.g. ``--strict`` builds).
    """

    exit_code: int = 2


class InputError(UserError, ValueError):
    """The data folder, the labels CSV, a store path or an argument cannot be used; the message names
    the file or argument and the fix."""

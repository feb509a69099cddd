"""Execute a notebook top to bottom with its parameters set: ``make notebook`` and the tests.

The notebook's parameters live in one code cell tagged ``parameters`` (papermill's convention), one
``NAME = value  # comment`` per line. :func:`execute_notebook` rewrites the values it is given in a
copy of that cell, runs every cell in a real Jupyter kernel (nbclient + ipykernel) and writes the
executed copy; the source notebook is never modified. Needs the ``explore`` extra (in ``dev``).

    python -m neurocache.notebook notebooks/eda.ipynb --set STORE=store.zarr --set OUTPUTS=outputs \\
        --to outputs/eda_executed.ipynb
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from neurocache.errors import UserError

_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)(?P<comment>\s+#.*)?$")


class NotebookError(UserError, RuntimeError):
    """No parameters cell, an unknown parameter, or a cell that raised while executing."""


def set_parameters(source: str, params: dict[str, Any]) -> str:
    """``source`` of a parameters cell with the values of ``params`` replaced (as Python literals).

    Raises:
        NotebookError: a parameter that the cell does not assign (the message lists those it does).
    """
    lines = source.splitlines()
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if m and m.group("name") in params:
            seen.add(m.group("name"))
            lines[i] = f"{m.group('name')} = {params[m.group('name')]!r}{m.group('comment') or ''}"
    unknown = sorted(set(params) - seen)
    if unknown:
        names = [m.group("name") for m in map(_ASSIGN.match, source.splitlines()) if m]
        raise NotebookError(f"the parameters cell sets no {', '.join(unknown)}; it sets: {', '.join(names)}")
    return "\n".join(lines)


def execute_notebook(src: str | Path, dst: str | Path, params: dict[str, Any] | None = None, *,
                     cwd: str | Path | None = None, timeout: int = 600, kernel: str = "python3"):
    """Run ``src`` with ``params`` set; write the executed notebook to ``dst`` and return it (nbformat).

    Args:
        src: the notebook (outputs cleared in git).
        dst: where the executed copy goes (outside git, e.g. ``outputs/eda_executed.ipynb``).
        params: values for the names the ``parameters`` cell assigns.
        cwd: the kernel's working directory (default: ``src``'s folder).
        timeout: seconds one cell may run.

    Raises:
        NotebookError: no parameters cell, an unknown parameter, or a failing cell (the executed copy
            with the traceback is still written to ``dst``).
    """
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as e:
        raise NotebookError(f"executing a notebook needs nbclient, nbformat and ipykernel "
                            f"(pip install 'neurocache[explore]'): {e}") from None
    nb = nbformat.read(str(src), as_version=4)
    if params:
        cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
        if not cells:
            raise NotebookError(f"{src} has no code cell tagged 'parameters'")
        cells[0].source = set_parameters(cells[0].source, params)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(cwd or Path(src).resolve().parent)}})
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()
    except CellExecutionError as e:
        nbformat.write(nb, str(dst))
        raise NotebookError(f"a cell of {src} failed (executed copy with the traceback: {dst}):\n{e}") from None
    nbformat.write(nb, str(dst))
    return nb


def _value(raw: str) -> Any:
    """``--set NAME=VALUE``: a Python literal when it parses as one (numbers, None, quoted strings), else the string."""
    import ast

    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurocache.notebook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook", type=Path, help="the notebook to run (e.g. notebooks/eda.ipynb)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter (repeatable)")
    p.add_argument("--to", type=Path, required=True, help="the executed copy to write")
    p.add_argument("--cwd", type=Path, default=Path.cwd(), help="the kernel's working directory (relative paths)")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may run")
    args = p.parse_args(argv)
    params = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r} must look like NAME=VALUE")
        k, v = item.split("=", 1)
        params[k.strip()] = _value(v)
    t0 = time.perf_counter()
    try:
        execute_notebook(args.notebook, args.to, params, cwd=args.cwd, timeout=args.timeout)
    except NotebookError as e:
        print(f"notebook: error: {e}", file=sys.stderr)
        return 1
    print(f"executed {args.notebook} in {time.perf_counter() - t0:.0f} s -> {args.to}\n"
          f"open it in Jupyter: jupyter lab {args.to}  (or VS Code; `pip install jupyterlab` if needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

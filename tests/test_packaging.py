"""Packaging: every third-party import is declared in pyproject.toml, and the source package
neurocache/build/ survives a ``build/`` line in an ignore file."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("neurocache", "trainer")

#: Import name -> distribution name where they differ (packages_distributions() adds what is installed).
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "google_crc32c": "google-crc32c",
    "jpeg_ls": "pyjpegls",
    "mlflow": "mlflow-skinny",
    "cv2": "opencv-python",
    "dateutil": "python-dateutil",
}


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` = ``pyyaml``, ``google_crc32c`` = ``google-crc32c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    """``"dask[distributed]>=2024.8"`` -> ``"dask"``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, f"pyproject.toml: cannot read the requirement {req!r}"
    return _normal(m.group(1))


def _declared() -> tuple[set[str], set[str]]:
    """(names in ``dependencies``, names in any optional extra) of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return core, extras


def _guards_import_error(node: ast.Try) -> bool:
    """A ``try`` with an ``except ImportError`` / ``ModuleNotFoundError`` handler."""
    names = set()
    for h in node.handlers:
        for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]) if h.type is not None else []:
            names.add(ast.unparse(t))
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _imports(tree: ast.AST, *, on_import: bool = True) -> Iterator[tuple[str, int, bool]]:
    """(top-level module name, line, whether importing the file imports it unconditionally) of every
    absolute import: those inside a function, under ``if TYPE_CHECKING`` or guarded by
    ``except ImportError`` are not unconditional."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, on_import
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.module.split(".")[0], node.lineno, on_import
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(node, on_import=False)
        elif isinstance(node, ast.Try) and _guards_import_error(node):
            yield from _imports(node, on_import=False)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node, on_import=False)
        else:
            yield from _imports(node, on_import=on_import)


def _third_party_imports() -> list[tuple[str, str, bool]]:
    """(module, ``file:line``, unconditional) of every import of neurocache/ and trainer/ that is
    neither the standard library nor the project's own packages."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod, line, on_import in _imports(ast.parse(path.read_text(), filename=str(path))):
                if mod not in sys.stdlib_module_names and mod not in PACKAGES:
                    found.append((mod, f"{path.relative_to(ROOT)}:{line}", on_import))
    return found


@cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's metadata: once


def _candidates(mod: str) -> set[str]:
    """The distribution names that may provide the import ``mod``."""
    names = {mod, DISTRIBUTIONS.get(mod, mod), *_installed().get(mod, [])}
    return {_normal(n) for n in names}


def test_the_import_scan_sees_direct_and_nested_imports():
    imports = _third_party_imports()
    mods = {m for m, _, _ in imports}
    assert {"numpy", "PIL", "google_crc32c", "scipy", "fsspec", "torch", "mlflow"} <= mods
    assert not mods & {"os", "json", "__future__", "neurocache", "trainer"}
    assert ("fsspec", False) in {(m, u) for m, _, u in imports}  # neurocache.remote imports it in a function
    src = "import a\ntry:\n    import b\nexcept ImportError:\n    b = None\ndef f():\n    from c.d import e\n"
    assert list(_imports(ast.parse(src))) == [("a", 1, True), ("b", 3, False), ("c", 7, False)]


def test_every_import_is_declared():
    """Each third-party import of neurocache/ and trainer/ names a distribution in ``dependencies`` or an extra."""
    core, extras = _declared()
    missing = sorted({f"{mod} ({where})" for mod, where, _ in _third_party_imports()
                      if not _candidates(mod) & (core | extras)})
    assert missing == [], f"declare these in pyproject.toml (dependencies, or an extra for an optional feature): {missing}"


def test_unconditional_imports_are_core_dependencies():
    """An import that runs when its module is imported (not in a function, not guarded by
    ``except ImportError``) needs a core dependency: an extra would leave the module unimportable."""
    core, _ = _declared()
    missing = sorted({f"{mod} ({where})" for mod, where, on_import in _third_party_imports()
                      if on_import and not _candidates(mod) & core})
    assert missing == [], f"move these to pyproject.toml's dependencies (or import them where they are used): {missing}"


# -- neurocache/build/ and a `build/` ignore rule ---------------------------------------------------

def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


needs_git = pytest.mark.skipif(_git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true",
                               reason="not a git checkout (e.g. an sdist)")


@needs_git
def test_build_package_is_tracked():
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "neurocache" / "build").glob("*.py"))
    tracked = _git("ls-files", "neurocache/build").stdout.split()
    assert "neurocache/build/pipeline.py" in on_disk
    assert [p for p in on_disk if p not in tracked] == [], "git add these (a `build/` ignore rule may hide them)"


def test_build_package_is_found_by_setuptools():
    from setuptools import find_packages

    found = find_packages(where=str(ROOT), include=["neurocache*", "trainer*"])
    assert "neurocache.build" in found and "neurocache" in found and "trainer" in found


@needs_git
@pytest.mark.parametrize("rule", ["build/", "build", "/build/"])
def test_a_build_ignore_rule_does_not_hide_the_build_package(tmp_path, rule):
    """Common Python .gitignore templates hold an unanchored ``build/``: in a contributor's global
    excludes file it would hide every new file of neurocache/build/; the repository's .gitignore
    re-includes the package (a higher-precedence file than core.excludesFile)."""
    excludes = tmp_path / "ignore"
    excludes.write_text(f"{rule}\n")
    for path in ("neurocache/build/pipeline.py", "neurocache/build/new_module.py"):
        r = _git("-c", f"core.excludesFile={excludes}", "check-ignore", "--no-index", "-v", path)
        assert r.returncode == 1, f"{rule!r} in core.excludesFile ignores {path}: {r.stdout.strip()}"
    # the rule itself works (so the assertions above test the guard, not a rule that never matched)
    r = _git("-c", f"core.excludesFile={excludes}", "check-ignore", "--no-index", "build/lib/neurocache/x.py")
    assert r.returncode == 0

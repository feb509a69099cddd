"""Every exception class a package defines (not a test module: test_errors.py and test_trainer_errors.py use it)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType


def package_exceptions(package: ModuleType) -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of ``package``, by qualified name (``__main__`` is not imported)."""
    found = {}
    for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if m.name.endswith("__main__"):
            continue
        mod = importlib.import_module(m.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == m.name:
                found[f"{m.name}.{name}"] = obj
    return found

"""One family of user errors (neurocache.errors.UserError): the CLI prints those in one line, anything
else reaches the user with its traceback."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from _exceptions import package_exceptions

import neurocache
from neurocache.cli import main
from neurocache.errors import InputError, UserError

ROOT = Path(__file__).resolve().parents[1]

#: Exception classes of neurocache that never reach a user, and why.
INTERNAL = {
    "neurocache.reasons.Quarantine": "a file that cannot be cached: the build catches it and writes a quarantined row",
}


def _neurocache_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a neurocache module, by qualified name."""
    return package_exceptions(neurocache)


def test_missing_store_is_one_line_without_traceback(tmp_path):
    store = tmp_path / "none.zarr"
    r = subprocess.run([sys.executable, "-m", "neurocache", "info", str(store)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"neurocache info: error: no neurocache store at {store}: "
                                     f"run `neurocache build --store {store} ...` first"]


def test_invalid_yaml_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("preprocess:\n  size: [1\n")
    assert main(["build", "--data-root", str(tmp_path), "--store", str(tmp_path / "s.zarr"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"config file {cfg} is not valid YAML" in err and "line 2" in err


def test_bad_store_url_and_plot_arguments_are_user_errors(tmp_path, capsys):
    assert main(["info", "foo://bucket/x.zarr"]) == 2  # fsspec's ValueError, named as the --store's
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "store foo://bucket/x.zarr cannot be opened: Protocol not known: foo" in err
    from neurocache.plot import plot_preprocessing

    with pytest.raises(InputError, match=r"n=0: .* at least 1 \(--n\)"):
        plot_preprocessing(None, 1, 0, tmp_path / "p.png")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="does not exist: create it or choose another --out"):
        plot_preprocessing(None, 1, 2, tmp_path / "no" / "p.png")  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [ValueError("internal: a bug"), RuntimeError("internal: a bug"),
                                   FileNotFoundError("internal: a bug"), KeyError("internal: a bug")])
def test_an_internal_error_keeps_its_traceback(monkeypatch, tmp_path, capsys, error):
    import neurocache.info

    def broken(store):
        raise error

    monkeypatch.setattr(neurocache.info, "store_info", broken)
    with pytest.raises(type(error), match="internal: a bug") as e:
        main(["info", str(tmp_path / "s.zarr")])
    assert e.value is error and e.traceback[-1].name == "broken"  # the traceback reaches the user unchanged
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("error", "code"), [("StoreError", 2), ("BuildError", 1)])
def test_a_user_error_gives_its_exit_code(monkeypatch, tmp_path, capsys, error, code):
    import neurocache.info

    cls = _neurocache_exceptions()[{"StoreError": "neurocache.store.StoreError",
                                    "BuildError": "neurocache.build.state.BuildError"}[error]]

    def refuse(store):
        raise cls(f"store {store} is not usable; choose another --store path")

    monkeypatch.setattr(neurocache.info, "store_info", refuse)
    assert main(["info", str(tmp_path / "s.zarr")]) == code
    assert capsys.readouterr().err.splitlines() == [f"neurocache info: error: store {tmp_path / 's.zarr'} is not usable; "
                                                    "choose another --store path"]


def test_every_user_facing_error_is_a_user_error():
    found = _neurocache_exceptions()
    assert {"neurocache.config.ConfigError", "neurocache.errors.InputError", "neurocache.store.StoreError",
            "neurocache.build.state.BuildError", "neurocache.execution.ClusterError",
            "neurocache.notebook.NotebookError", "neurocache.reasons.Quarantine"} <= set(found)
    not_user = [name for name, cls in found.items() if not issubclass(cls, UserError) and name not in INTERNAL]
    assert not_user == [], f"derive these from neurocache.errors.UserError or list them in INTERNAL: {not_user}"
    assert not any(issubclass(found[name], UserError) for name in INTERNAL)


def test_user_errors_keep_their_builtin_bases():
    """``except ValueError`` / ``except RuntimeError`` callers keep working."""
    found = _neurocache_exceptions()
    for name in ("neurocache.config.ConfigError", "neurocache.errors.InputError"):
        assert issubclass(found[name], ValueError)
    for name in ("neurocache.store.StoreError", "neurocache.build.state.BuildError", "neurocache.execution.ClusterError",
                 "neurocache.notebook.NotebookError"):
        assert issubclass(found[name], RuntimeError)
    from neurocache.inputs import InputError as inputs_error

    assert inputs_error is InputError and neurocache.UserError is UserError and "UserError" in neurocache.__all__


def test_the_cli_catches_only_user_errors():
    tree = ast.parse((ROOT / "neurocache" / "cli.py").read_text())
    caught = [ast.unparse(h.type) if h.type is not None else "<bare>" for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    assert caught == ["UserError"]

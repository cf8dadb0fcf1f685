"""Finds the bindings `componentize-py` generates from the contract (`wit/plugin.wit`).

Inside a component, `componentize-py componentize` provides the `wit_world` package itself,
and its import functions call the host. Natively (unit tests) it does not exist, so we use
the copy `kiln plugin build` writes to `<project>/build/bindings`: the same types (Request,
Message, FileInfo, ...) whose import functions raise `NotImplementedError`, which the fake
host in `kiln_plugin.testing` stands in for. Using the generated types rather than copies
keeps the SDK and the contract from drifting apart.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _candidates() -> list[Path]:
    # The project root is the folder holding `kiln_plugin/`. `__file__` is deliberately not
    # resolved: in a project where `kiln_plugin` is a symlink to a shared SDK copy, the
    # root is where the link is, not where the SDK lives. The working directory comes
    # second, for tests started from the project root with an unusual `sys.path`.
    roots = dict.fromkeys([Path(__file__).parent.parent.absolute(), Path.cwd()])
    return [root / "build" / "bindings" for root in roots]


def _add_native_bindings() -> None:
    for folder in _candidates():
        if (folder / "wit_world").is_dir():
            sys.path.append(str(folder))
            return
    looked = ", ".join(str(c) for c in _candidates())
    raise ImportError(
        "kiln_plugin: the contract bindings are missing (looked in "
        f"{looked}). Run `kiln plugin build` once in the project folder: it generates "
        "them under build/bindings, and the unit tests use them."
    )


try:
    import wit_world  # noqa: F401  (provided by componentize-py inside a component)
except ModuleNotFoundError as error:
    if error.name != "wit_world":
        raise
    _missing = True
else:
    _missing = False
if _missing:  # outside the `except`, so a failure here does not chain the import error
    _add_native_bindings()

from componentize_py_types import Err, Ok  # noqa: E402
from wit_world import exports  # noqa: E402
from wit_world.imports import artifacts, files, llm, log, progress, types  # noqa: E402

__all__ = ["Err", "Ok", "artifacts", "exports", "files", "llm", "log", "progress", "types"]

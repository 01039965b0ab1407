"""Packages that hand on their modules' public names without importing those modules until a
name is used, so that importing a package costs nothing (the Slicer module imports parts of the
library before its run-time packages are installed). Parses on Python 3.9."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: name -> the same name of the submodule
    ``exports[name]``, imported on first use. Other names raise AttributeError, so that ``from
    package import submodule`` still imports the submodule."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__

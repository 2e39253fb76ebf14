"""Lazy package exports (PEP 562): a package's public names are imported from their submodules on first use, so
importing the package (and the CLI's `--help`) does not pay for torch and timm."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict) -> Callable[[str], object]:
    """The module `__getattr__` of `package`: `exports` maps a name to the (relative) submodule defining it; the
    value is cached in the package's `namespace` once imported."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    return __getattr__

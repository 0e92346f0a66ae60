"""Package names imported on first use (PEP 562), so that importing a torch-free module of a package does
not import the package's torch-heavy parts (a cold text search never imports torch)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_names(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: each name of ``homes`` is read from its module (the value)
    when first asked for."""

    def __getattr__(name: str) -> object:
        if name in homes:
            return getattr(import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

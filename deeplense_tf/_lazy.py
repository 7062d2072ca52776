"""Lazy public names for the sub-packages.

A sub-package's `__init__` lists `{public name: submodule}` and gets `__getattr__` and
`__dir__` from `lazy_exports`, so `import deeplense_tf.data` stays cheap (no TensorFlow)
and a submodule is imported only when one of its names is first used. This matters for
simulation worker processes and for `deeplense --help`.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """Return `(__getattr__, __dir__)` for `package` exposing `exports` lazily."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__

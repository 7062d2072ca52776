"""Lazy public names for the sub-packages.

A sub-package's `__init__` lists `{public name: submodule}` and gets `__getattr__` and
`__dir__` from `lazy_exports`, so `import deeplense_tf.data` stays cheap (no TensorFlow)
and a submodule is imported only when one of its names is first used. This matters for
simulation worker processes and for `deeplense --help`.

`after_import(name, callback)` runs a callback once a module is imported, which is how
the package registers its Keras objects without importing Keras itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """Return `(__getattr__, __dir__)` for `package` exposing `exports` lazily."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback()` once, right after the module `name` has finished importing.

    Sits first on `sys.meta_path` until `name` is imported, asks the other finders for the
    real spec and wraps only its loader's `exec_module`, so the module itself is imported
    exactly as it would be without us.
    """

    def __init__(self, name: str, callback):
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookups below from recursing
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None  # not installed: the import fails as it would without us
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_call(module):
            exec_module(module)
            self.callback()

        loader.exec_module = exec_then_call  # this spec's own loader instance only
        return spec


def after_import(name: str, callback) -> None:
    """Call `callback()` now if module `name` is imported already, else right after its import."""
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))

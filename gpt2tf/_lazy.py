"""Lazy re-exports for package `__init__` files: `name` is imported from its module on first use, so importing a
package (or one of its light modules) does not import its heavy ones (TensorFlow, FastAPI)."""

import importlib


def lazy_exports(package, exports):
    """(`__getattr__`, `__dir__`) for a package whose public names are `exports` ({name: module})."""

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__

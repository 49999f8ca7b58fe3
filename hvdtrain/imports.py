"""User code named by import path, 'package.module:name' (models, datasets, losses, metrics, callbacks), and the
Python objects the entry point (`hvdtrain.train`) takes in their place."""

from __future__ import annotations

import importlib

from hvdtrain.errors import UserError

# Objects given to hvdtrain.train(...) that no import path reaches (defined in the script being run, or not at
# a module's top level), by the name their path gives: 'python:<name>'. Every rank runs the same script, so every
# rank registers the same names.
PYTHON_OBJECTS = "python"
_registry: dict[str, object] = {}


def import_by_path(path: str, what: str, error: type[UserError]) -> object:
    """The object `path` names; an import failure is `error` naming `what` (e.g. "model.name='pkg.m:f'")."""
    module_name, _, attr = path.partition(":")
    if module_name == PYTHON_OBJECTS:
        if attr not in _registry:
            raise error(f"{what} names a Python object given to hvdtrain.train() in another process: give the "
                        "object again (or an import path 'package.module:name' that other processes can import)")
        return _registry[attr]
    try:
        found: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise error(f"{what} cannot be imported ({exc}): check the name and that its package is on PYTHONPATH "
                    "on every node") from None
    return found


def path_of(obj: object) -> str:
    """An import path naming `obj`: its module's, where another process can import it the same (a module-level
    function or class outside the script being run), else 'python:<name>' in this process's registry."""
    name = getattr(obj, "__name__", None) or type(obj).__name__.lower()
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and module != "__main__" and qualname == name and name.isidentifier():
        try:
            if getattr(importlib.import_module(module), name, None) is obj:
                return f"{module}:{name}"
        except ImportError:
            pass
    base = name if name.isidentifier() else "object"  # a lambda's name is '<lambda>'
    key, n = base, 1
    while key in _registry and _registry[key] is not obj:
        n += 1
        key = f"{base}_{n}"
    _registry[key] = obj
    return f"{PYTHON_OBJECTS}:{key}"

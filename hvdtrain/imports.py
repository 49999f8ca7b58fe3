"""User code named by import path, 'package.module:name' (models, datasets, callbacks)."""

from __future__ import annotations

import importlib

from hvdtrain.errors import UserError


def import_by_path(path: str, what: str, error: type[UserError]) -> object:
    """The object `path` names; an import failure is `error` naming `what` (e.g. "model.name='pkg.m:f'")."""
    module_name, _, attr = path.partition(":")
    try:
        found: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise error(f"{what} cannot be imported ({exc}): check the name and that its package is on PYTHONPATH "
                    "on every node") from None
    return found

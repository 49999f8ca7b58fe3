"""Parameter rules shared by the backends: which parameters are frozen, their LR multipliers, and which ones
weight decay applies to. Parameter
names are each backend's own (torch: `features.0.weight`; Keras: `sequential/conv2d/kernel`). Where
`train.init_from` weights come from is the loop's business (hvdtrain/training/weight_sources.py)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from hvdtrain.errors import ConfigError


def _unmatched(pattern: str, names: list[str], key: str) -> ConfigError:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return ConfigError(f"{key} pattern {pattern!r} matches no parameter: this model's parameters are {shown}")


def frozen(names: Iterable[str], patterns: tuple[str, ...]) -> set[str]:
    """The names matching any `train.freeze` pattern; a pattern matching nothing is an error."""
    names = list(names)
    found: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise _unmatched(pattern, names, "train.freeze")
        found |= hits
    return found


def lr_multipliers(names: Iterable[str], entries: tuple[str, ...]) -> dict[str, float]:
    """name -> LR multiplier from `optim.param_groups` (first matching entry wins; unmatched names: 1)."""
    names = list(names)
    rules = [(pattern, float(mult)) for pattern, _, mult in (e.rpartition("=") for e in entries)]
    for pattern, _ in rules:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise _unmatched(pattern, names, "optim.param_groups")
    out = {}
    for name in names:
        out[name] = next((m for pattern, m in rules if fnmatch.fnmatchcase(name, pattern)), 1.0)
    return out


def decays(shape: tuple[int, ...], weight_decay_on: str) -> bool:
    """Whether `optim.weight_decay` applies to a parameter of this shape (`optim.weight_decay_on`)."""
    return weight_decay_on == "all" or len(shape) >= 2

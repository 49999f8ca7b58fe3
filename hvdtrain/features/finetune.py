"""Fine-tuning rules shared by the backends: which parameters are frozen, their LR multipliers, and where
`train.init_from` weights come from. Parameter names are each backend's own (torch: `features.0.weight`;
Keras: `sequential/conv2d/kernel`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

import yaml

from hvdtrain.config import Config, ModelConfig
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


MODEL_FILES = {"torch": "model.pt", "tensorflow": "model.keras"}  # a run's final model, per backend


def init_source(cfg: Config, path: str | None = None, key: str = "train.init_from") -> Path:
    """The final-model file or checkpoint directory `key` (train.init_from or distill.teacher) names,
    checked to come from the same backend."""
    native_files = MODEL_FILES
    path = Path(str(path or cfg.train.init_from))
    if (path / "manifest.json").is_file():
        from hvdtrain.training.checkpoint import read_checkpoint
        backend = read_checkpoint(path).manifest["identity"].get("backend")
        source = path
    elif (path / "config.yaml").is_file():
        try:
            backend = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("backend", "torch")
        except yaml.YAMLError:
            backend = None
        source = path / native_files.get(str(backend), "")
        if backend in native_files and not source.is_file():
            raise ConfigError(f"{key}: run directory '{path}' has no final model ({source.name}); "
                              "point it at one of its checkpoints/epoch-* directories")
    else:
        raise ConfigError(f"{key}: '{path}' is neither a checkpoint directory (with manifest.json) nor a "
                          "run directory (with config.yaml): pass one of them")
    if backend != cfg.backend:
        raise ConfigError(f"{key}: '{path}' holds {backend} weights but this run uses backend="
                          f"{cfg.backend}: train the source with the same backend")
    return source


def teacher_model_config(cfg: Config) -> ModelConfig:
    """The teacher's `model` section, from the config.yaml of its run (distill.teacher: a run directory or a
    checkpoint directory inside one)."""
    from hvdtrain.config import load_config

    path = Path(str(cfg.distill.teacher))
    for run_dir in (path, path.parent.parent):
        if (run_dir / "config.yaml").is_file():
            return load_config(run_dir / "config.yaml").model
    raise ConfigError(f"distill.teacher: no config.yaml in '{path}' or its run directory: pass the teacher's run "
                      "directory")

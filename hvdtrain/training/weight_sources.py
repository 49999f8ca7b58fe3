"""Where weights from outside the run come from: `train.init_from` (fine-tuning) and `distill.teacher`."""

from __future__ import annotations

from pathlib import Path

import yaml

from hvdtrain.config import Config, ModelConfig, load_config
from hvdtrain.errors import ConfigError
from hvdtrain.registry import BACKENDS
from hvdtrain.training.checkpoint import read_checkpoint

MODEL_FILES = {name: info.model_file for name, info in BACKENDS.items()}  # a run's final model, per backend


def init_source(cfg: Config, path: str | None = None, key: str = "train.init_from") -> Path:
    """The final-model file or checkpoint directory `key` (train.init_from or distill.teacher) names,
    checked to come from the same backend."""
    native_files = MODEL_FILES
    root = Path(str(path or cfg.train.init_from))
    if (root / "manifest.json").is_file():
        backend = read_checkpoint(root).manifest["identity"].get("backend")
        source = root
    elif (root / "config.yaml").is_file():
        try:
            backend = (yaml.safe_load((root / "config.yaml").read_text()) or {}).get("backend", "torch")
        except yaml.YAMLError:
            backend = None
        source = root / native_files.get(str(backend), "")
        if backend in native_files and not source.is_file():
            raise ConfigError(f"{key}: run directory '{root}' has no final model ({source.name}); "
                              "point it at one of its checkpoints/epoch-* directories")
    else:
        raise ConfigError(f"{key}: '{root}' is neither a checkpoint directory (with manifest.json) nor a "
                          "run directory (with config.yaml): pass one of them")
    if backend != cfg.backend:
        raise ConfigError(f"{key}: '{root}' holds {backend} weights but this run uses backend="
                          f"{cfg.backend}: train the source with the same backend")
    return source


def teacher_model_config(cfg: Config) -> ModelConfig:
    """The teacher's `model` section, from the config.yaml of its run (distill.teacher: a run directory or a
    checkpoint directory inside one)."""
    path = Path(str(cfg.distill.teacher))
    for run_dir in (path, path.parent.parent):
        if (run_dir / "config.yaml").is_file():
            return load_config(run_dir / "config.yaml").model
    raise ConfigError(f"distill.teacher: no config.yaml in '{path}' or its run directory: pass the teacher's run "
                      "directory")

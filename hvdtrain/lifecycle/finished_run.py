"""A finished run directory, opened for the commands that come after training (evaluate, predict, export,
convert): its config, summary, classes, input shape, preprocessing and final model (or a checkpoint).

A run is finished when it holds config.yaml, summary.json and the final model of its backend (model.pt or
model.keras). Everything the model needs at inference comes from there: the architecture from the config,
the input shape and class names from the summary (or, for runs written before they were recorded, from the
run's dataset), and the featurewise statistics from the summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.augment.standardize import FeatureStats
from hvdtrain.config import Config, flatten, load_config, to_dict
from hvdtrain.errors import ConfigError, UserError
from hvdtrain.training.checkpoint import read_checkpoint
from hvdtrain.training.weight_sources import MODEL_FILES


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run directory holds."""

    dir: Path
    cfg: Config
    summary: dict[str, Any]
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]

    @property
    def backend(self) -> str:
        return self.cfg.backend

    @property
    def samples_noun(self) -> str:
        """What one input is, for messages: token windows, feature vectors (samples) or images."""
        if self.cfg.task == "language_model":
            return "token windows"
        return "samples" if len(self.image_shape) == 1 else "images"

    @property
    def model_file(self) -> Path:
        return self.dir / MODEL_FILES[self.cfg.backend]

    @property
    def stats(self) -> FeatureStats | None:
        """The featurewise statistics the run trained with (augment.featurewise_*), or None."""
        if "featurewise_mean" not in self.summary:
            return None
        return FeatureStats(np.asarray(self.summary["featurewise_mean"], dtype=np.float32),
                            np.asarray(self.summary["featurewise_std"], dtype=np.float32))


def open_run(path: str | Path, command: str, overrides: tuple[str, ...] | list[str] = ()) -> FinishedRun:
    """The finished run at `path`; `overrides` (key=value) may change only the data section and
    train.eval_batch_size: the model and its preprocessing are the run's."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{command}: '{root}' is not a directory: pass a run directory (run.dir of a finished run)")
    if not (root / "config.yaml").is_file():
        raise UserError(f"{command}: '{root}' holds no config.yaml, so it is not a run directory: pass the run.dir "
                        "of a finished training run")
    if not (root / "summary.json").is_file():
        raise UserError(f"{command}: '{root}' has no summary.json: the run did not finish; finish it first "
                        "(train.resume=auto with the same run.dir), or pass --checkpoint PATH")
    for item in overrides:
        key = item.partition("=")[0]
        if not (key.startswith("data.") or key in ("train.eval_batch_size", "seed")):
            raise ConfigError(f"{command}: '{item}' would change the trained model or its preprocessing; only "
                              "data.* and train.eval_batch_size may be overridden")
    cfg = load_config(root / "config.yaml", list(overrides))
    try:
        summary = json.loads((root / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{command}: '{root / 'summary.json'}' is not readable JSON ({exc}): the run directory is "
                        "damaged; train it again") from None
    run = FinishedRun(root, cfg, summary, tuple(summary.get("class_names", ())),
                      tuple(summary.get("image_shape", ())))
    if not run.class_names or not run.image_shape:  # written before these were recorded
        from hvdtrain.data import load_dataset

        dataset = load_dataset(load_config(root / "config.yaml").data, cfg.seed, cfg.task)
        run = replace(run, class_names=dataset.class_names, image_shape=dataset.image_shape)
    if not run.model_file.is_file():
        raise UserError(f"{command}: '{root}' has no {run.model_file.name}: the run did not finish; finish it or "
                        "pass --checkpoint PATH")
    return run


def checkpoint_source(run: FinishedRun, checkpoint: str | None, command: str) -> Path:
    """The weights to load: the run's final model, or a checkpoint directory of the same architecture."""
    if checkpoint is None:
        return run.model_file
    path = Path(checkpoint)
    if not (path / "manifest.json").is_file():
        raise UserError(f"{command}: --checkpoint '{path}' is not a checkpoint directory (no manifest.json): pass "
                        f"one of {run.dir / 'checkpoints'}/epoch-* or step-*")
    identity = read_checkpoint(path).manifest.get("identity", {})
    if identity.get("backend") not in (None, run.backend):
        raise UserError(f"{command}: --checkpoint '{path}' holds {identity.get('backend')} weights but the run is "
                        f"{run.backend}: pass a checkpoint of this run, or convert the run first")
    mine = {k: v for k, v in flatten(to_dict(run.cfg)).items() if k.startswith("model.")}
    differ = sorted(k for k, v in identity.items() if k.startswith("model.") and k in mine and mine[k] != v)
    if differ:
        raise UserError(f"{command}: --checkpoint '{path}' holds another architecture ({', '.join(differ)} "
                        "differ from the run's config): pass a checkpoint of this run's model")
    return path

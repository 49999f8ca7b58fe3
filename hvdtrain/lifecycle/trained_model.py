"""A finished run's model, rebuilt in its own framework and loaded with its final weights (or a checkpoint's),
ready to predict. Imports only the run's framework (through hvdtrain.backend.get_backend)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from hvdtrain.augment.pipeline import AugmentPipeline, EvalTransform
from hvdtrain.backend import Backend, Inference, get_backend, require_inference
from hvdtrain.config import DistillConfig
from hvdtrain.lifecycle.finished_run import FinishedRun
from hvdtrain.training.setup import build_spec


@dataclasses.dataclass
class TrainedModel:
    """A backend holding the run's trained model (Horovod started: under a launcher, one per rank)."""

    run: FinishedRun
    backend: Backend
    inference: Inference

    def preprocess(self) -> EvalTransform | None:
        """The run's validation preprocessing (rescale, sample- and featurewise normalisation), or None."""
        return AugmentPipeline(self.run.cfg.augment, None, self.run.stats).eval_transform()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits for NHWC images (uint8, or float32 in [0, 1]) of the run's input shape, preprocessed as in
        training's validation."""
        transform = self.preprocess()
        x = images if transform is None else transform(images, np.zeros(len(images), np.int64), 0)[0]
        return self.inference.predict(x)


def load_trained_model(run: FinishedRun, source: Path | None = None) -> TrainedModel:
    """Starts the run's backend, builds its model and loads `source`: the run's final model file (default) or
    a checkpoint directory. Every rank reads the file itself (read-only)."""
    backend = get_backend(run.backend)
    backend.setup(run.cfg.train.threads_per_rank)
    # A distilled student needs no teacher to predict.
    cfg = dataclasses.replace(run.cfg, distill=DistillConfig())
    backend.build(build_spec(cfg, run.image_shape, len(run.class_names)))
    source = source or run.model_file
    backend.load(source, "checkpoint" if source.is_dir() else "init")
    return TrainedModel(run, backend, require_inference(backend))

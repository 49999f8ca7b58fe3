"""The two framework halves of `hvdtrain convert` (hvdtrain/lifecycle/convert.py), each a process of its own
that imports only its framework:

    python -m hvdtrain.lifecycle.convert_worker export RUN_DIR SCRATCH
        the run's model in its framework -> SCRATCH/portable.npz (framework-neutral arrays, see
        torch_backend/portable.py) and SCRATCH/source_logits.npy (on SCRATCH/images.npy)
    python -m hvdtrain.lifecycle.convert_worker import RUN_DIR OUT SCRATCH BATCHES_TRACKED
        the model of OUT/config.yaml (the other framework) built, loaded from SCRATCH/portable.npz and saved
        into OUT as a run's final model and weights.npz; SCRATCH/target_logits.npy

Each writes SCRATCH/<step>.json (framework version, tensors) when done, or SCRATCH/error.txt (one line) on a
user error. Both compute logits in float32 (the run's policy.precision aside, TF32 off): the weights are
float32 in either framework, and the check compares the networks, not roundings.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hvdtrain.backend import Backend, get_backend, require_inference
from hvdtrain.config import Config, DistillConfig, load_config
from hvdtrain.errors import UserError
from hvdtrain.lifecycle.finished_run import FinishedRun, open_run
from hvdtrain.lifecycle.trained_model import TrainedModel, load_trained_model
from hvdtrain.registry import BACKENDS
from hvdtrain.reporting.outputs import RunOutputs
from hvdtrain.training.setup import build_spec

IMAGES, PORTABLE, SOURCE_LOGITS, TARGET_LOGITS, ERROR = ("images.npy", "portable.npz", "source_logits.npy",
                                                         "target_logits.npy", "error.txt")


def float32_config(cfg: Config) -> Config:
    """`cfg` computing in float32 (policy.precision=fp32), without a distillation teacher (not needed to
    predict)."""
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, precision="fp32"), distill=DistillConfig())


def _portable(backend: str) -> ModuleType:
    module = importlib.import_module(BACKENDS[backend].module("portable"))
    module.exact_float32()
    return module


def _framework_model(backend: Backend) -> Any:
    getter = getattr(backend, "framework_model", None)
    return getter() if getter is not None else getattr(backend, "model")  # noqa: B009


def _logits(model: TrainedModel, images: np.ndarray) -> np.ndarray:
    batch = max(1, model.run.cfg.train.eval_batch())
    parts = [model.logits(images[i:i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32)


def _architecture(run: FinishedRun) -> str:
    return f"model.name={run.cfg.model.name}"


def export(run_dir: Path, scratch: Path) -> None:
    run = open_run(run_dir, "convert")
    portable = _portable(run.backend)
    model = load_trained_model(dataclasses.replace(run, cfg=float32_config(run.cfg)))
    try:
        try:
            arrays = portable.portable_arrays(_framework_model(model.backend), run.image_shape, _architecture(run))
        except ValueError as exc:
            raise UserError(f"convert: {exc}") from None
        np.savez(scratch / PORTABLE, *arrays)
        np.save(scratch / SOURCE_LOGITS, _logits(model, np.load(scratch / IMAGES)))
        (scratch / "export.json").write_text(json.dumps({"framework_version": model.backend.framework_version(),
                                                          "tensors": len(arrays)}))
    finally:
        model.backend.comm.shutdown()


def import_(run_dir: Path, out: Path, scratch: Path, batches_tracked: int) -> None:
    source = open_run(run_dir, "convert")
    cfg = load_config(out / "config.yaml")
    portable = _portable(cfg.backend)
    target = dataclasses.replace(source, dir=out, cfg=cfg)
    backend = get_backend(cfg.backend)
    backend.setup(cfg.train.threads_per_rank)
    try:
        backend.build(build_spec(float32_config(cfg), source.image_shape, len(source.class_names)))
        with np.load(scratch / PORTABLE) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        try:
            count = portable.load_portable(_framework_model(backend), arrays, source.image_shape,
                                           _architecture(source), batches_tracked)
        except ValueError as exc:
            raise UserError(f"convert: {exc}") from None
        model = TrainedModel(target, backend, require_inference(backend))
        np.save(scratch / TARGET_LOGITS, _logits(model, np.load(scratch / IMAGES)))
        backend.save(out, "model")
        RunOutputs(out, enabled=True).save_weights(backend.weights())
        (scratch / "import.json").write_text(json.dumps({"framework_version": backend.framework_version(),
                                                          "tensors": count}))
    finally:
        backend.comm.shutdown()


def main(argv: list[str]) -> int:
    step, scratch = argv[0], Path(argv[2] if argv[0] == "export" else argv[3])
    try:
        if step == "export":
            export(Path(argv[1]), scratch)
        else:
            import_(Path(argv[1]), Path(argv[2]), scratch, int(argv[4]))
    except UserError as exc:
        (scratch / ERROR).write_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

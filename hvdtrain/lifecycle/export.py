"""`python -m hvdtrain export RUN_DIR --format FORMAT`: a finished run's model as a standalone artifact for
another runtime, checked against the trained model before it is kept.

The artifact takes NHWC float32 images in [0, 1] (any batch size) and returns logits: the run's
standardisation (augment.rescale, sample- and featurewise normalisation, with the featurewise statistics from
summary.json) is built in, so it sees exactly what the trainer's validation sees. It is written under a
temporary name, loaded back with its own runtime (onnxruntime, torch.export.load, tf.saved_model.load) and
compared with the trained model's logits (TrainedModel.logits) on validation images; only when they agree
within TOLERANCE does it take its name.

Framework-neutral: the backend's exporter (torch_backend/export.py, tf_backend/export.py) is imported by name,
so only the run's framework is imported; onnxruntime runs ONNX artifacts of either backend here.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from hvdtrain.augment.pipeline import pixels
from hvdtrain.augment.standardize import Standardization
from hvdtrain.backend import Backend
from hvdtrain.errors import UserError
from hvdtrain.lifecycle.finished_run import FinishedRun, checkpoint_source, open_run
from hvdtrain.registry import BACKENDS

COMMAND = "export"
TOLERANCE = 1e-4     # the largest |logit difference| accepted between the artifact and the trained model
CHECK_IMAGES = 64    # validation images the check runs (fewer when the split is smaller)

# The file (or directory) name --out defaults to under RUN_DIR/export, per format (hvdtrain/registry.py: which
# formats each backend writes).
DEFAULT_NAMES = {"onnx": "model.onnx", "torch-export": "model.pt2", "savedmodel": "savedmodel"}
DIRECTORY_FORMATS = ("savedmodel",)
# Python packages a format needs beyond the run's framework: to write it, and to run it for the check.
PACKAGES: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "onnx"): ("onnx", "onnxscript", "onnxruntime"),
    ("tensorflow", "onnx"): ("onnx", "tf2onnx", "onnxruntime"),
}


def run_standardization(run: FinishedRun) -> Standardization:
    """What the run's artifacts do to their input before the model."""
    aug, stats = run.cfg.augment, run.stats
    if (aug.featurewise_center or aug.featurewise_std_normalization) and stats is None:
        raise UserError(f"{COMMAND}: '{run.dir / 'summary.json'}' holds no featurewise statistics although the "
                        "run normalises featurewise: the run directory is damaged; train it again")
    return Standardization.of(aug, stats)


class Exporter(Protocol):
    """A backend's export module (torch_backend/export.py, tf_backend/export.py)."""

    def exact_math(self) -> None:
        """Full float32 arithmetic from now on (no TF32 on GPUs), so the check compares like with like."""

    def write(self, backend: Backend, fmt: str, standardization: Standardization, path: Path) -> None:
        """Writes `backend`'s model, in inference mode behind `standardization`, as `fmt` at `path`."""

    def run_artifact(self, fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
        """Loads the artifact at `path` with its framework's runtime and returns its logits for `images`."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_run` wrote and how closely it matched the trained model."""

    run_dir: Path
    backend: str
    fmt: str
    path: Path
    size_bytes: int
    max_diff: float
    images: int
    split: str              # where the check images came from: "validation" (or "training" without one)
    checkpoint: Path | None = None
    noun: str = "images"    # what the inputs are (FinishedRun.samples_noun)

    def line(self) -> str:
        source = f", checkpoint {self.checkpoint}" if self.checkpoint is not None else ""
        return (f"exported {self.run_dir} ({self.backend}{source}) to {self.path} ({self.fmt}, "
                f"{human_size(self.size_bytes)}): max |logit diff| {self.max_diff:.2g} vs the trained model on "
                f"{self.images} {self.split} {self.noun}")


def human_size(size: int) -> str:
    """Bytes in decimal units: '812 B', '32.5 kB', '1.2 MB'."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def check_format(backend: str, fmt: str) -> None:
    """A one-line error unless the run's backend writes `fmt`, or when a package that format needs is missing."""
    offered = BACKENDS[backend].export_formats
    if fmt not in offered:
        known = sorted({f for info in BACKENDS.values() for f in info.export_formats})
        what = f"is not offered for {backend} runs" if fmt in known else "is unknown"
        raise UserError(f"{COMMAND}: --format '{fmt}' {what}: a {backend} run exports to {', '.join(offered)}")
    for package in PACKAGES.get((backend, fmt), ()):
        if find_spec(package) is None:
            raise UserError(f"{COMMAND}: --format {fmt} needs the Python package '{package}', which is not "
                            "installed: run `make setup` (scripts/setup_env.sh)")


def output_path(run: FinishedRun, fmt: str, out: str | None) -> Path:
    """Where the artifact goes: --out, or RUN_DIR/export/<default name>; its parent is created."""
    path = Path(out) if out is not None else run.dir / "export" / DEFAULT_NAMES[fmt]
    if fmt in DIRECTORY_FORMATS:
        if path.exists() and not path.is_dir():
            raise UserError(f"{COMMAND}: --out '{path}' is a file, but --format {fmt} writes a directory: pass a new "
                            "directory path")
        if path.is_dir() and any(path.iterdir()) and not (path / "saved_model.pb").is_file():
            raise UserError(f"{COMMAND}: --out '{path}' is a directory holding other files: pass a new or empty "
                            f"directory (an existing {fmt} there is replaced)")
    elif path.is_dir():
        raise UserError(f"{COMMAND}: --out '{path}' is a directory, but --format {fmt} writes a file: pass a file "
                        f"path, e.g. {path / DEFAULT_NAMES[fmt]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_images(run: FinishedRun) -> tuple[np.ndarray, str]:
    """Up to CHECK_IMAGES images of the run's validation split (its first ones; the training split's when the
    run has none), as float32 in [0, 1]: the artifact's input."""
    from hvdtrain.data import load_dataset

    dataset = load_dataset(run.cfg.data, run.cfg.seed, run.cfg.task)
    source, split = (dataset.val, "validation") if len(dataset.val) else (dataset.train, "training")
    images, _ = source.read(np.arange(min(CHECK_IMAGES, len(source))))
    if run.cfg.task == "language_model":  # token windows (int64) go in as they are
        return images, split
    return pixels(images), split


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """The logits of an ONNX artifact for `images`, from onnxruntime on the CPU."""
    import onnxruntime  # type: ignore[import-untyped]  # no stubs

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: images})[0])


def artifact_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def put_in_place(new: Path, path: Path) -> None:
    """Renames `new` to `path`, replacing what is there (a file atomically; a directory moved aside first)."""
    if new.is_dir() and path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rename(path, old / path.name)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def export_run(run_dir: str, fmt: str, out: str | None, checkpoint: str | None) -> ExportResult:
    """Writes the run's model (or a checkpoint's) as `fmt` to `out` (default RUN_DIR/export/...), loads it back
    with its runtime and checks its logits against the trained model's; raises UserError (one line) when the
    run, format, output path or check fails, leaving nothing written."""
    run = open_run(run_dir, COMMAND)
    check_format(run.backend, fmt)
    source = checkpoint_source(run, checkpoint, COMMAND)
    path = output_path(run, fmt, out)
    standardization = run_standardization(run)
    images, split = check_images(run)

    from hvdtrain.lifecycle.trained_model import load_trained_model

    # The artifact computes in float32 whatever the run trained in (bf16/fp16 runs keep float32 weights), so
    # the model it is checked against does too. A checkpoint's model weights replace the final model's, as
    # train.init_from loads them: its optimizer state (fp16's loss scale) would not fit a float32 build.
    fp32 = dataclasses.replace(run, cfg=dataclasses.replace(
        run.cfg, policy=dataclasses.replace(run.cfg.policy, precision="fp32")))
    trained = load_trained_model(fp32)  # imports the run's framework
    if source != run.model_file:
        trained.backend.load(source, "init")
    exporter = cast(Exporter, importlib.import_module(BACKENDS[run.backend].module("export")))
    exporter.exact_math()
    expected = trained.logits(images)

    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.export-"))
    try:
        written = staging / path.name
        try:
            exporter.write(trained.backend, fmt, standardization, written)
        except UserError:
            raise
        except Exception as exc:  # a converter's own error: its first line, and what it was doing
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"{COMMAND}: writing --format {fmt} failed ({type(exc).__name__}: {first}): this model "
                            "cannot be exported to that format; try another format") from None
        got = run_onnx(written, images) if fmt == "onnx" else exporter.run_artifact(fmt, written, images)
        if got.shape != expected.shape:
            raise UserError(f"{COMMAND}: the exported {fmt} model returned logits of shape {got.shape}, the trained "
                            f"model {expected.shape}: nothing was written; please report this as a bug")
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if len(images) else 0.0
        if not diff <= TOLERANCE:  # NaN fails too
            raise UserError(f"{COMMAND}: the exported {fmt} model's logits differ from the trained model's by up to "
                            f"{diff:.2g} (> {TOLERANCE:g}) on {len(images)} {split} {run.samples_noun}: nothing was "
                            "written; please report this as a bug")
        size = artifact_size(written)
        put_in_place(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(Path(run_dir), run.backend, fmt, path, size, diff, len(images), split,
                        Path(checkpoint) if checkpoint is not None else None, run.samples_noun)

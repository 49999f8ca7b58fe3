"""`python -m hvdtrain convert RUN_DIR --to torch|tensorflow --out NEW_RUN_DIR`: a finished run of a built-in
architecture as a complete run directory of the other backend, checked on the run's validation images.

Every weight and BatchNorm statistic goes through a framework-neutral list of arrays (torch's module order,
Keras' layout: torch_backend/portable.py and tf_backend/portable.py). The source framework writes it in one
process and the target framework reads it in another (hvdtrain/lifecycle/convert_worker.py; a process imports
only one framework, and this one neither). Both compute logits on up to MAX_IMAGES validation images with
the run's preprocessing; more than TOLERANCE apart anywhere (relative to the largest logit where that is
above 1) and nothing is written.

The new directory holds what the commands after training and `train.init_from` read: config.yaml (the run's,
with the backend and run.dir switched, and train.freeze / optim.param_groups dropped: their patterns name the
source framework's parameters), the final model (model.pt or model.keras), weights.npz (the target
framework's names, as its training runs write it), summary.json (the run's, with backend, framework_version
and config_hash switched and a `converted_from` entry) and the run's metrics.jsonl (its training history).
It is written into a hidden folder next to --out and renamed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import hvdtrain
from hvdtrain.config import BUILTIN_MODELS, Config, config_hash, to_yaml
from hvdtrain.data import load_dataset
from hvdtrain.data.source import read_skipping
from hvdtrain.errors import UserError
from hvdtrain.files import write_atomic
from hvdtrain.lifecycle import convert_worker as worker
from hvdtrain.lifecycle.finished_run import FinishedRun, open_run
from hvdtrain.registry import BACKEND_NAMES, other_backend
from hvdtrain.text.tokenizer import TOKENIZER_FILE

TARGETS = BACKEND_NAMES
MAX_IMAGES = 512
TOLERANCE = 1e-4
_WORLD_SIZE_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_LAUNCHER_PREFIXES = ("HOROVOD_", "OMPI_", "PMI_", "PMIX_")  # kept from the workers: each is a world of one


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What `convert_run` did."""

    run_dir: Path
    source_backend: str
    out: Path
    target_backend: str
    tensors: int              # portable tensors moved (weights and BatchNorm statistics)
    max_abs_logit_diff: float
    images: int               # images the logits were compared on
    image_split: str          # "validation" (or "training" for a run without a validation split)
    dropped: tuple[str, ...]  # config keys reset because their values name the source framework's parameters
    logit_diff_limit: float = 1e-4  # what max_abs_logit_diff was held to (logit_limit)
    noun: str = "images"            # what the inputs are (FinishedRun.samples_noun)

    def line(self) -> str:
        limit = f" (limit {self.logit_diff_limit:.1e}: large logits)" if self.logit_diff_limit > TOLERANCE else ""
        dropped = f"; dropped {', '.join(self.dropped)} (they name {self.source_backend} parameters)" \
            if self.dropped else ""
        return (f"converted {self.run_dir} ({self.source_backend}) -> {self.out} ({self.target_backend}): "
                f"{self.tensors} tensors, max |logit diff| {self.max_abs_logit_diff:.1e}{limit} on {self.images} "
                f"{self.image_split} {self.noun}{dropped}")


def _refuse_early(run: FinishedRun, to: str, out: Path) -> None:
    name = run.cfg.model.name
    if name not in BUILTIN_MODELS:
        raise UserError(f"convert: '{run.dir}' trains your own model (model.name={name}): convert maps only the "
                        f"built-in architectures ({', '.join(BUILTIN_MODELS)}); move its weights yourself")
    if to not in TARGETS:
        raise UserError(f"convert: --to {to} is not a backend: choose {' or '.join(TARGETS)}")
    if to == run.backend:
        raise UserError(f"convert: '{run.dir}' is already a {to} run: pass --to "
                        f"{other_backend(to).name}, or copy the directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"convert: --out '{out}' already exists and is not empty: pass a new (or empty) directory")
    size = max((int(os.environ.get(v, "1") or 1) for v in _WORLD_SIZE_VARS), default=1)
    if size > 1:
        raise UserError("convert: runs as one process: start it without horovodrun/mpirun")


def _target_config(cfg: Config, to: str, out: Path) -> tuple[Config, tuple[str, ...]]:
    """The run's config for the other backend: backend and run.dir switched, parameter-name patterns dropped."""
    dropped = tuple(key for key, value in (("train.freeze", cfg.train.freeze),
                                           ("optim.param_groups", cfg.optim.param_groups)) if value)
    return dataclasses.replace(cfg, backend=to, run=dataclasses.replace(cfg.run, dir=str(out)),
                               train=dataclasses.replace(cfg.train, freeze=()),
                               optim=dataclasses.replace(cfg.optim, param_groups=())), dropped


def _check_images(run: FinishedRun) -> tuple[np.ndarray, str]:
    """Up to MAX_IMAGES of the run's validation images (spread over the split), or of its training images
    when it has no validation split."""
    dataset = load_dataset(run.cfg.data, run.cfg.seed, run.cfg.task)
    source, split = (dataset.val, "validation") if len(dataset.val) else (dataset.train, "training")
    count = min(MAX_IMAGES, len(source))
    indices = np.unique(np.linspace(0, len(source) - 1, count).round().astype(np.int64))
    images, _, _ = read_skipping(source, indices)
    if not len(images):
        raise UserError(f"convert: none of the run's {split} {run.samples_noun} can be read, so the converted model "
                        "cannot be checked: make the run's data readable (data.path)")
    return images, split


def _worker_env() -> dict[str, str]:
    """This environment for a worker: this hvdtrain first on its path, no launcher's variables (a world of one)."""
    root = str(Path(hvdtrain.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_worker(args: list[str], scratch: Path, framework: str) -> dict[str, Any]:
    """Runs one worker step; its report, or its one-line error as a UserError."""
    proc = subprocess.run([sys.executable, "-m", "hvdtrain.lifecycle.convert_worker", *args], env=_worker_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if (scratch / worker.ERROR).is_file():
        raise UserError((scratch / worker.ERROR).read_text().strip())
    report = scratch / f"{args[0]}.json"
    if proc.returncode != 0 or not report.is_file():
        raise RuntimeError(f"convert: the {framework} {args[0]} step failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def logit_limit(logits: np.ndarray) -> float:
    """The largest difference a conversion may show: TOLERANCE, relative to the largest logit where that exceeds
    1 (float32 round-off grows with the values: an immature network's logits in the hundreds differ in the
    fourth decimal while agreeing to 1e-6 of their size)."""
    return TOLERANCE * max(1.0, float(np.max(np.abs(logits))) if logits.size else 0.0)


def _summary(run: FinishedRun, cfg: Config, framework_version: str, diff: float, limit: float, images: int,
             tensors: int) -> dict[str, Any]:
    summary = {**run.summary, "backend": cfg.backend, "framework_version": framework_version,
               "config_hash": config_hash(cfg)}
    summary["converted_from"] = {"run_dir": str(run.dir.resolve()), "backend": run.backend,
                                 "framework_version": run.summary.get("framework_version"),
                                 "max_abs_logit_diff": diff, "logit_diff_limit": limit, "images": images,
                                 "tensors": tensors}
    return summary


def convert_run(run_dir: str, to: str, out: str) -> ConvertResult:
    """Converts the finished run at `run_dir` to backend `to` as the new run directory `out` (see the module's
    docstring); one-line UserErrors for what the user can fix, nothing left in `out` on any failure."""
    run = open_run(run_dir, "convert")
    target = Path(out)
    _refuse_early(run, to, target)
    images, split = _check_images(run)
    cfg, dropped = _target_config(run.cfg, to, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.converting-"))
    except OSError as exc:
        raise UserError(f"convert: --out '{target}' cannot be created ({exc.strerror}): pass a writable "
                        "location") from None
    try:
        os.chmod(work, 0o755)  # mkdtemp's folder is private to its owner; a run directory is for everyone
        scratch = work / ".convert"
        scratch.mkdir()
        np.save(scratch / worker.IMAGES, images)
        write_atomic(work / "config.yaml", to_yaml(cfg))
        exported = _run_worker(["export", str(run.dir), str(scratch)], scratch, run.backend)
        steps = int(run.summary.get("steps", 0) or 0) * int(run.summary.get("accumulation_steps", 1) or 1)
        imported = _run_worker(["import", str(run.dir), str(work), str(scratch), str(steps)], scratch, to)
        source_logits, target_logits = np.load(scratch / worker.SOURCE_LOGITS), np.load(scratch / worker.TARGET_LOGITS)
        if not np.isfinite(source_logits).all():
            raise UserError(f"convert: the {run.backend} run's model gives non-finite logits (NaN or inf) on its "
                            f"{split} {run.samples_noun}, so a conversion cannot be checked: convert a run that "
                            "trained stably")
        diff = float(np.max(np.abs(source_logits - target_logits)))
        limit = logit_limit(source_logits)
        if not math.isfinite(diff) or diff > limit:
            raise UserError(f"convert: the converted {to} model's logits differ from the {run.backend} run's by up "
                            f"to {diff:.1e} on {len(images)} {split} {run.samples_noun} (limit {limit:.1e}): "
                            "nothing was written; please report this as a bug with the run's config.yaml")
        summary = _summary(run, cfg, imported["framework_version"], diff, limit, len(images), exported["tensors"])
        write_atomic(work / "summary.json", json.dumps(summary, indent=2) + "\n")
        for kept in ("metrics.jsonl", TOKENIZER_FILE):  # the history; a language model's tokenizer (generate)
            if (run.dir / kept).is_file():
                shutil.copyfile(run.dir / kept, work / kept)
        shutil.rmtree(scratch)
        try:
            os.replace(work, target)  # onto an empty directory too
        except OSError as exc:
            raise UserError(f"convert: --out '{target}' could not be written ({exc.strerror}): pass a new "
                            "directory") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ConvertResult(Path(run_dir), run.backend, target, to, exported["tensors"], diff, len(images), split,
                         dropped, limit, run.samples_noun)

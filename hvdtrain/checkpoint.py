"""Checkpoints: one layout for both backends, written atomically by rank 0, found again for resuming.

    RUN_DIR/checkpoints/epoch-0003/manifest.json   common: epoch, step, history, config hash, model
                                  /<native files>  the backend's own (torch: state.pt; Keras: weights + npz)
    RUN_DIR/checkpoints/best/                      a copy of the best epoch by `checkpoint.best_metric`

A checkpoint directory is filled under a temporary name in the same folder and renamed when complete, so a
reader never sees a half-written one; `manifest.json` is written last. Data order and augmentation are
functions of (seed, rank, epoch) and the LR schedule of the step, so (epoch, step) is all the loop needs
to continue exactly where it stopped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hvdtrain.config import Config, config_hash, flatten, to_dict
from hvdtrain.errors import UserError
from hvdtrain.outputs import write_atomic

FORMAT = 1
MANIFEST = "manifest.json"
# Keys that decide the shapes and meaning of the saved state: a checkpoint is refused when they differ.
_IDENTITY_PREFIXES = ("backend", "model.", "data.name", "data.synthetic_shape", "data.num_classes",
                      "data.image_size", "optim.name", "policy.precision")


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run."""


class SavesState(Protocol):
    def save_checkpoint(self, directory: Path) -> list[str]: ...


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk and what its manifest says."""

    path: Path
    manifest: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.manifest["epoch"])

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.manifest["history"])


def identity(cfg: Config) -> dict[str, Any]:
    """The config keys a checkpoint's state depends on."""
    return {k: v for k, v in flatten(to_dict(cfg)).items() if k.startswith(_IDENTITY_PREFIXES)}


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint directory (or its manifest.json), checked for completeness."""
    directory = path.parent if path.name == MANIFEST else path
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"'{directory}' is not a complete checkpoint (no {MANIFEST}): pass a "
                              "checkpoints/epoch-NNNN directory or train.resume=auto")
    try:
        manifest = json.loads(manifest_path.read_text())
        missing = [f for f in manifest["files"] if not (directory / f).is_file()]
        int(manifest["epoch"]), int(manifest["step"]), manifest["identity"]  # noqa: B018 (shape check)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint manifest '{manifest_path}' is unreadable or corrupt ({exc}): "
                              "resume from another checkpoint") from None
    if missing:
        raise CheckpointError(f"checkpoint '{directory}' lacks {', '.join(missing)}: resume from another "
                              "checkpoint")
    return Checkpoint(directory, manifest)


def newest(run_dir: Path) -> Checkpoint | None:
    """The newest complete epoch checkpoint under RUN_DIR/checkpoints, if any."""
    root = run_dir / "checkpoints"
    candidates = sorted(root.glob("epoch-*/" + MANIFEST)) if root.is_dir() else []
    return read_checkpoint(candidates[-1]) if candidates else None


def check_compatible(checkpoint: Checkpoint, cfg: Config) -> None:
    """Refuses a checkpoint of another backend, model or data shape, naming what differs."""
    saved, mine = checkpoint.manifest["identity"], identity(cfg)
    diffs = [f"{k}={saved.get(k)!r} there, {mine.get(k)!r} here" for k in sorted(set(saved) | set(mine))
             if saved.get(k) != mine.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint '{checkpoint.path}' was written by a different setup "
                              f"({'; '.join(diffs[:3])}): resume with the config it was written with, or "
                              "start a new run.dir")


class Checkpointer:
    """Writes checkpoints on rank 0 (`enabled`) following the `checkpoint` config section."""

    def __init__(self, cfg: Config, run_dir: Path, enabled: bool) -> None:
        self.cfg = cfg
        self.root = run_dir / "checkpoints"
        self.enabled = enabled
        self.best_value: float | None = None

    def restore_best(self, history: list[dict[str, Any]]) -> None:
        """Continues the best-metric tracking of a resumed run."""
        metric = self.cfg.checkpoint.best_metric
        values = [r[metric] for r in history if metric and r.get(metric) is not None]
        if values:
            self.best_value = min(values) if "loss" in metric else max(values)

    def due(self, epoch: int) -> bool:
        """Whether the end of (1-based) `epoch` gets a checkpoint."""
        every = self.cfg.checkpoint.every_epochs
        return every > 0 and (epoch % every == 0 or epoch == self.cfg.train.epochs)

    def save(self, backend: SavesState, epoch: int, step: int, history: list[dict[str, Any]]) -> Path | None:
        """Writes checkpoints/epoch-NNNN atomically, prunes old ones, refreshes `best`."""
        if not self.enabled:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"epoch-{epoch:04d}"
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name}."))
        try:
            files = backend.save_checkpoint(tmp)
            manifest = {"format": FORMAT, "epoch": epoch, "step": step, "files": files, "history": history,
                        "config_hash": config_hash(self.cfg), "identity": identity(self.cfg)}
            write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        self._update_best(final, history[-1])
        return final

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        epochs = sorted(self.root.glob("epoch-*"))
        for old in epochs[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    def _update_best(self, source: Path, record: dict[str, Any]) -> None:
        metric = self.cfg.checkpoint.best_metric
        value = record.get(metric) if metric else None
        if value is None:
            return
        lower_is_better = "loss" in metric
        if self.best_value is not None and (value >= self.best_value if lower_is_better else
                                            value <= self.best_value):
            return
        self.best_value = value
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".best."))
        shutil.copytree(source, staging, dirs_exist_ok=True)
        old = self.root / "best"
        if old.exists():
            retired = self.root / f".best.old.{staging.name}"
            old.rename(retired)
            staging.rename(old)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(old)

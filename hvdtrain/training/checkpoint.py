"""Checkpoints: one layout for both backends, written atomically by rank 0, found again for resuming.

    RUN_DIR/checkpoints/epoch-0003/manifest.json   common: the loop's TrainingState (epoch, position in
                                                   the epoch, step, history), config hash, identity
                                  /<native files>  the backend's own (torch: state.pt; Keras: weights + npz)
    RUN_DIR/checkpoints/epoch-0003-step-00000250/  mid-epoch (checkpoint.every_steps): 3 epochs done, step 250
    RUN_DIR/checkpoints/best/                      a copy of the best epoch by `checkpoint.best_metric`

Names sort in training order. A checkpoint directory is filled under a temporary name (a dot and the final
name) in the same folder and renamed when complete, so a reader never sees a half-written one;
`manifest.json` is written last. Leftovers of a writer killed half-way are hidden by their dot and removed
by the next writer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from hvdtrain.config import Config, config_hash, flatten, to_dict
from hvdtrain.errors import CheckpointError
from hvdtrain.files import write_atomic
from hvdtrain.training.state import TrainingState

FORMAT = 2
MANIFEST = "manifest.json"
# Keys that decide the shapes and meaning of the saved state: a checkpoint is refused when they differ.
_IDENTITY_PREFIXES = ("backend", "task", "model.", "data.name", "data.synthetic_shape", "data.num_classes",
                      "data.image_size", "optim.name", "policy.precision")


class SavesState(Protocol):
    def save(self, directory: Path, kind: Literal["checkpoint"]) -> list[str]: ...


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk and what its manifest says."""

    path: Path
    manifest: dict[str, Any]

    @property
    def state(self) -> TrainingState:
        """The loop's position when the checkpoint was written."""
        return TrainingState.from_dict(self.manifest["state"])


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
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, this hvdtrain reads {FORMAT}")
        TrainingState.from_dict(manifest["state"]), manifest["identity"]  # noqa: B018 (shape check)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint manifest '{manifest_path}' is unreadable or corrupt ({exc}): "
                              "resume from another checkpoint") from None
    if missing:
        raise CheckpointError(f"checkpoint '{directory}' lacks {', '.join(missing)}: resume from another "
                              "checkpoint")
    return Checkpoint(directory, manifest)


def _complete(root: Path) -> list[Path]:
    """Complete checkpoint directories under `root`, oldest first (their names sort in training order)."""
    found = [p for p in root.glob("epoch-*") if (p / MANIFEST).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def newest(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint under RUN_DIR/checkpoints, if any."""
    candidates = _complete(run_dir / "checkpoints")
    return read_checkpoint(candidates[-1]) if candidates else None


def check_compatible(checkpoint: Checkpoint, cfg: Config) -> None:
    """Refuses a checkpoint of another backend, model or data shape, naming what differs."""
    # Checkpoints from before tasks existed are classification's.
    saved, mine = {"task": "classification", **checkpoint.manifest["identity"]}, identity(cfg)
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
        if not metric:
            return
        values = [r[metric] for r in history if r.get(metric) is not None]
        if values:
            self.best_value = min(values) if self.cfg.lower_is_better(metric) else max(values)

    def due_at_epoch_end(self, epoch: int, last: bool) -> bool:
        """Whether the end of (1-based) `epoch` gets a checkpoint (`last`: the run ends there)."""
        every = self.cfg.checkpoint.every_epochs
        return every > 0 and (epoch % every == 0 or last)

    def due_at_step(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based, over the run) gets a mid-epoch checkpoint."""
        every = self.cfg.checkpoint.every_steps
        return every > 0 and step % every == 0

    def remove_leftovers(self) -> None:
        """Deletes what writers or pruning killed half-way left behind: hidden temporary directories, and
        checkpoint directories without a manifest (a complete one only ever appears by an atomic rename)."""
        if self.enabled and self.root.is_dir():
            for tmp in self.root.glob(".*"):
                shutil.rmtree(tmp, ignore_errors=True)
            for partial in self.root.glob("epoch-*"):
                if not (partial / MANIFEST).is_file():
                    shutil.rmtree(partial, ignore_errors=True)

    def save(self, backend: SavesState, state: TrainingState) -> Path | None:
        """Writes a checkpoint of `state` atomically, prunes old ones, refreshes `best` at epoch ends."""
        if not self.enabled:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{state.epoch:04d}" + (f"-step-{state.step:08d}" if state.position else "")
        final = self.root / name
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name}."))
        try:
            files = backend.save(tmp, "checkpoint")
            manifest = {"format": FORMAT, "epoch": state.epoch, "step": state.step, "files": files,
                        "state": state.to_dict(), "config_hash": config_hash(self.cfg),
                        "identity": identity(self.cfg)}
            write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        if state.position == 0 and state.history:
            self._update_best(final, state.history[-1])
        return final

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        kept = _complete(self.root)
        for old in kept[:-keep] if keep > 0 else []:
            # Renamed first (atomic), so a kill during the deletion leaves a hidden leftover, not a
            # half-deleted checkpoint under its own name.
            retired = self.root / f".pruned.{old.name}"
            shutil.rmtree(retired, ignore_errors=True)  # an earlier run's, killed while deleting it
            old.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)

    def _update_best(self, source: Path, record: dict[str, Any]) -> None:
        metric = self.cfg.checkpoint.best_metric
        if not metric:
            return
        value = record.get(metric)
        if value is None:
            return
        if self.best_value is not None and (value >= self.best_value if self.cfg.lower_is_better(metric) else
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

"""The run directory: config.yaml, metrics.jsonl, summary.json and final weights, written by rank 0 only."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.errors import UserError
from hvdtrain.files import write_atomic


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


_RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints", "weights.npz")


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (data worker processes not included)."""
    return _status_mb("VmHWM")


class RunOutputs:
    """Writes a run's files; every method is a no-op unless `enabled` (rank 0)."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.dir = directory
        self.enabled = enabled
        self.metrics_path = directory / "metrics.jsonl"
        self.steps_path = directory / "steps.jsonl"

    def holds_a_run(self) -> bool:
        """Whether the directory already has a run's outputs."""
        return any((self.dir / name).exists() for name in _RUN_FILES)

    def refuse_if_used(self, overwrite: bool) -> None:
        """Refuses a directory that holds another run, unless `overwrite` (run.overwrite)."""
        if not overwrite and self.holds_a_run():
            raise UserError(f"run.dir '{self.dir}' already holds a run: set train.resume=auto to continue it, "
                            "run.overwrite=true to replace it, or another run.dir")

    def start(self, config_yaml: str, *, history: list[dict[str, Any]] | None = None, resume_step: int = 0,
              overwrite: bool = False) -> None:
        """Creates the directory, saves the resolved config and starts the metrics log: fresh, or, when
        resuming, holding the checkpoint's `history` and steps up to `resume_step` (what was logged after
        that checkpoint is dropped).

        A directory holding another run is refused unless resuming or `overwrite` (run.overwrite)."""
        if not self.enabled:
            return
        if history is None:
            self.refuse_if_used(overwrite)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"run.dir '{self.dir}' cannot be created ({exc.strerror}): "
                            "set run.dir to a writable folder") from None
        if history is None and overwrite:
            for folder in ("checkpoints", "profile", "tensorboard", "samples"):
                shutil.rmtree(self.dir / folder, ignore_errors=True)
        write_atomic(self.dir / "config.yaml", config_yaml)
        if history is None:
            self.steps_path.unlink(missing_ok=True)
        self.rewind(history or [], resume_step)
        (self.dir / "summary.json").unlink(missing_ok=True)

    def copy_in(self, source: Path) -> None:
        """A copy of the file `source` in the run directory, under its own name (atomically)."""
        if self.enabled:
            write_atomic(self.dir / source.name, source.read_bytes())

    def rewind(self, history: list[dict[str, Any]], step: int) -> None:
        """Makes the logs say what a run at optimizer step `step` with these completed epochs has done:
        used when resuming and after an elastic rollback (what was logged later is dropped)."""
        if not self.enabled:
            return
        self.write_metrics(history)
        if self.steps_path.exists():
            kept = [line for line in self.steps_path.read_text().splitlines(keepends=True)
                    if json.loads(line)["step"] <= step]
            write_atomic(self.steps_path, "".join(kept))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl with one JSON line per completed epoch (rewritten whole, atomically)."""
        if self.enabled:
            write_atomic(self.metrics_path, "".join(json.dumps(_json_safe(r)) + "\n" for r in history))

    def log_step(self, record: dict[str, Any]) -> None:
        """Appends one optimizer step's record to steps.jsonl (run.log_every_steps)."""
        if self.enabled:
            with self.steps_path.open("a") as f:
                f.write(json.dumps(_json_safe(record)) + "\n")

    def save_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Final weights in a framework-neutral form (weights.npz), for comparisons across runs."""
        if self.enabled:
            import io
            buf = io.BytesIO()
            # numpy's stub types **kwds as if a key could be its allow_pickle flag (these are weight names).
            np.savez(buf, **weights)  # type: ignore[arg-type]
            write_atomic(self.dir / "weights.npz", buf.getvalue())

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """Another JSON file of the run (e.g. sparsity.json), written atomically."""
        if self.enabled:
            write_atomic(self.dir / name, json.dumps(_json_safe(content), indent=1) + "\n")

    def write_samples(self, epoch: int, per_rank: list[list[tuple[int, str]]]) -> None:
        """samples/epoch-NNN.tsv (data.log_samples): rank, micro-batch and sample name, one line per sample."""
        if self.enabled:
            lines = ["rank\tbatch\tsample\n"] + [f"{rank}\t{batch}\t{name}\n" for rank, samples in enumerate(per_rank)
                                                for batch, name in samples]
            (self.dir / "samples").mkdir(exist_ok=True)
            write_atomic(self.dir / "samples" / f"epoch-{epoch:03d}.tsv", "".join(lines))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            write_atomic(self.dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")

"""The run directory: config.yaml, metrics.jsonl, summary.json and final weights, written by rank 0 only."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.errors import UserError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes a file so that readers see either the old content or the whole new one, never a part."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates files private to the owner; outputs are for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class RunOutputs:
    """Writes a run's files; every method is a no-op unless `enabled` (rank 0)."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.dir = directory
        self.enabled = enabled
        self.metrics_path = directory / "metrics.jsonl"
        self.steps_path = directory / "steps.jsonl"

    def start(self, config_yaml: str) -> None:
        """Creates the directory, saves the resolved config and starts a fresh metrics log."""
        if not self.enabled:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"run.dir '{self.dir}' cannot be created ({exc.strerror}): "
                            "set run.dir to a writable folder") from None
        write_atomic(self.dir / "config.yaml", config_yaml)
        write_atomic(self.metrics_path, "")
        self.steps_path.unlink(missing_ok=True)
        (self.dir / "summary.json").unlink(missing_ok=True)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Appends one epoch's record as a JSON line (one whole line per write)."""
        if self.enabled:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(_json_safe(record)) + "\n")

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
            np.savez(buf, **weights)
            write_atomic(self.dir / "weights.npz", buf.getvalue())

    def finish(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            write_atomic(self.dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")

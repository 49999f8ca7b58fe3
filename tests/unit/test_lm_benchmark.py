"""benchmarks/step_times.py: hvdtrain's step times for the language-model benchmark, read by the statistic the
hand-written loop reports (its real runs: `python -m benchmarks.lm`, docs/benchmarks.md)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from benchmarks.step_times import SKIPPED_STEPS, StepTimes, tokens_per_s


def test_tokens_per_s_leaves_out_the_first_steps() -> None:
    seconds = [1.0] * SKIPPED_STEPS + [0.1, 0.3]  # warm-up steps, then two steps of 0.2 s on average
    assert tokens_per_s(seconds, 768) == pytest.approx(768 / 0.2)
    assert tokens_per_s([0.5, 0.25, 0.25], 100) == pytest.approx(300)  # a run shorter than the warm-up: all steps


def test_step_times_are_written_by_rank_0_alone(tmp_path: Path) -> None:
    for rank in (1, 0):
        run_dir = tmp_path / f"rank{rank}"
        run_dir.mkdir()
        ctx = types.SimpleNamespace(rank=rank, run_dir=run_dir)
        callback = StepTimes(cfg=None)
        for total in (0.5, 0.25):
            callback.on_step_report(ctx, types.SimpleNamespace(total_s=total))
        callback.on_train_end(ctx, {})
        written = run_dir / "step_times.json"
        assert (json.loads(written.read_text()) == [0.5, 0.25]) if rank == 0 else not written.exists()

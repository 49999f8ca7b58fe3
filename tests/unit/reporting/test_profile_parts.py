"""The framework-free parts of `--profile` and the benchmark suite: the step profiler's bookkeeping, the
command line that places `--profile` anywhere, and the shared-memory allreduce's arithmetic."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmarks.allreduce import SharedArena, busbw, sizes_up_to
from hvdtrain.cli import main
from hvdtrain.reporting.profile import PARTS, StepProfiler


def test_profiler_counts_neither_the_first_step_nor_timeline_steps_in_its_totals(tmp_path: Path) -> None:
    profiler = StepProfiler(tmp_path, enabled=True, writes=True)
    profiler.timeline_on = True
    profiler.record(1, 1, data_wait=0.5, backend_step=2.0, communication=0.5, total=3.0)  # warm-up
    profiler.record(1, 2, data_wait=0.1, backend_step=1.0, communication=0.2, total=1.2)
    profiler.timeline_on = False
    profiler.record(2, 3, data_wait=0.0, backend_step=0.8, communication=0.3, total=1.0)
    profiler.record(2, 4, data_wait=0.2, backend_step=0.6, communication=0.1, total=1.0)
    profiler.flush()
    assert profiler.steps == 2
    assert profiler.totals == pytest.approx([0.2, 1.0, 0.4, 0.4])  # data wait, compute, communication, other
    rows = list(csv.DictReader((tmp_path / "profile" / "steps.csv").open()))
    assert [r["timeline"] for r in rows] == ["1", "1", "0", "0"]
    assert float(rows[0]["other_s"]) == pytest.approx(0.5)  # 3.0 - 0.5 waiting - 2.0 in the backend

    summary = profiler.summary([profiler.totals.tolist(), [0.0, 1.0, 1.0, 0.0]], [2, 2])
    assert summary["data_wait_fraction"] == pytest.approx((0.1 + 0.0) / 2)
    assert sum(summary[f"{p}_fraction"] for p in PARTS) == pytest.approx(1.0)
    assert summary["mean_step_s"] == pytest.approx((2.0 + 2.0) / 4)


def test_profiler_falls_back_to_every_step_when_no_clean_one_is_left(tmp_path: Path) -> None:
    profiler = StepProfiler(tmp_path, enabled=True, writes=False)
    profiler.timeline_on = True
    profiler.record(1, 1, data_wait=0.0, backend_step=1.0, communication=0.25, total=1.0)
    assert profiler.steps == 1 and profiler.totals == pytest.approx([0.0, 0.75, 0.25, 0.0])
    assert not (tmp_path / "profile").exists()  # other ranks write nothing


def test_profile_flag_and_overrides_mix_in_any_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The config error is reported only once parsing worked: proof that `--profile` between overrides parsed.
    code = main(["train.epochs=1", "--profile", "train.batch_size=0", f"run.dir={tmp_path}"])
    assert code == 2 and "train.batch_size" in capsys.readouterr().err


def test_unknown_options_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["train.epochs=1", "--no-such-flag"], ["train.epochs=1", "--profile", "stray"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_shared_memory_allreduce_sums_what_every_rank_holds(tmp_path: Path) -> None:
    """Two ranks as two threads on one segment (numpy releases the GIL in its copies and sums)."""
    arenas = [SharedArena(tmp_path / "arena", rank=r, ranks=2, max_bytes=4 * 1001) for r in (0, 1)]
    inputs = [np.arange(1001, dtype=np.float32) * (r + 1) for r in (0, 1)]  # an odd count: uneven halves
    outputs = [np.empty(1001, dtype=np.float32) for _ in (0, 1)]

    def rank(r: int) -> None:
        for _ in range(3):  # repeated calls: the barriers keep iterations apart
            arenas[r].allreduce(inputs[r], outputs[r])

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for out in outputs:
        assert np.array_equal(out, np.arange(1001, dtype=np.float32) * 3)
    for arena in arenas:
        arena.close()
    single = SharedArena(tmp_path / "one", rank=0, ranks=1, max_bytes=64)
    x, out = np.arange(16, dtype=np.float32), np.empty(16, dtype=np.float32)
    single.allreduce(x, out)
    assert np.array_equal(out, x)
    single.close()
    assert sizes_up_to(300 * 1024) == [4096, 16384, 65536, 262144]
    assert busbw(2**30, 1.0, 2) == pytest.approx(2**30 / 1e9)  # 2(n-1)/n = 1 at n = 2

"""benchmarks/trainmem.py's analysis and report, on made-up samples (its runs are real in
tests/distributed/test_training_memory.py)."""

from __future__ import annotations

import types

import pytest

from benchmarks.trainmem import section, slope_mb_per_step


def _run(images: int, peak: float, growth: float) -> dict:
    rows = [[0, 300.0, 0.0, "begin"]] + [[s, 400.0 + growth * s, 50.0, "step"] for s in range(5, 1001, 5)]
    rank = {"rows": rows, "slope": slope_mb_per_step(rows), "rank_peak_mb": peak, "workers_peak_mb": 60.0}
    return {"backend": "torch", "source": "image_folder", "images": images, "workers": 1, "seconds": 9.0,
            "steps": 1000, "ranks": [rank, rank]}


def test_slope_leaves_out_the_warm_up_and_reads_mb_per_step() -> None:
    rows = [[s, 1000.0 if s <= 100 else 500.0 + 0.2 * s, 0.0, "step"] for s in range(0, 1001, 5)]
    assert slope_mb_per_step(rows) == pytest.approx(0.2)  # the jump before step 100 does not count
    assert slope_mb_per_step(rows[:10]) != slope_mb_per_step(rows[:10])  # too few samples after step 100: nan


def test_report_rows_have_the_header_s_columns_and_the_verdicts() -> None:
    args = types.SimpleNamespace(steps=1000, sizes=[4000, 40000], backends=["torch"], sources=["image_folder"],
                                 workers=[1], image_size=224)
    text = section(args, [_run(4000, 560.0, 0.0), _run(40000, 700.0, 0.1)])
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1 and len(table) == 4  # head, rule, two runs
    assert table[2].endswith("| yes |") and table[3].endswith("| **no** |")  # 0.1 MB a step is growth
    assert "700 / 560 MB = 1.250" in text and "**not met**" in text

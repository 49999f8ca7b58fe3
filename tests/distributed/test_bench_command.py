"""`python -m hvdtrain bench`: runs for a few iterations on both backends under mpirun and prints and
writes well-formed numbers. Nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import run_hvdtrain

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("backend,extra", [("torch", ["policy.precision=bf16"]),
                                           ("tensorflow", ["policy.accumulation_steps=2", "policy.compression=fp16"])])
def test_bench_prints_and_writes_rates(tmp_path: Path, backend: str, extra: list[str]) -> None:
    out = tmp_path / "bench.json"
    proc = run_hvdtrain(["bench", f"backend={backend}", "model.name=mobilenet", "data.synthetic_shape=[16,16,3]",
                         "train.batch_size=8", *extra, "--warmup-batches", "1", "--batches-per-iter", "2",
                         "--iters", "3", "--json", str(out)], launcher="mpirun", np_=2)
    lines = [line.split(">:", 1)[-1] for line in proc.stdout.splitlines()]
    assert sum(1 for line in lines if re.fullmatch(r"iter #\d: [\d.]+ img/s per rank", line.strip())) == 3
    assert any(re.fullmatch(r"img/s per rank: [\d.]+ \+-[\d.]+", line.strip()) for line in lines)
    assert any(re.fullmatch(r"total img/s on 2 rank\(s\): [\d.]+ \+-[\d.]+", line.strip()) for line in lines)
    result = json.loads(out.read_text())
    assert result["backend"] == backend and result["world_size"] == 2 and len(result["iterations_img_per_s"]) == 3
    assert len(result["img_per_s_per_rank_all"]) == 2
    assert all(math.isfinite(r) and r > 0 for r in result["iterations_img_per_s"])
    assert result["img_per_s_total"] == pytest.approx(sum(result["img_per_s_per_rank_all"]))
    assert result["img_per_s_per_rank"] == pytest.approx(sum(result["iterations_img_per_s"]) / 3)
    assert result["precision"] == ("bf16" if backend == "torch" else "fp32")
    assert result["accumulation_steps"] == (2 if backend == "tensorflow" else 1)


def test_bench_rejects_bad_arguments_in_one_line(tmp_path: Path) -> None:
    for args, words in ((["--iters", "0"], "--iters must be >= 1"),
                        (["--json", str(tmp_path / "no" / "b.json")], "--json directory"),
                        (["model.nmae=cnn"], "unknown config key 'model.nmae'")):
        proc = run_hvdtrain(["bench", *args], check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1

"""A training rank's memory over the steps of real runs over on-disk images (a rank once grew with the folder it
read: its evaluation took the validation set in batches of 256, whose activations dwarfed a training step's).

One mpirun job per backend, together: torch over an image folder with a data worker per rank, TensorFlow
over the folder's tar shards in the training process (data.workers=0). Each rank's RSS is sampled every step by
benchmarks/trainmem.py's RssProbe (the callback the memory benchmark uses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_hvdtrain, together
from PIL import Image

from benchmarks.trainmem import EVERY_ENV, PROBE_DIR_ENV, slope_mb_per_step

pytestmark = pytest.mark.distributed

SLOPE_LIMIT = 0.05  # MB per step after the first 100 steps: the benchmark's target
EVAL_MARGIN_MB = 40  # what the peak may exceed the largest RSS seen at a step's end by (allocator slack)
COMMON = ["data.image_size=[64,64]", "data.val_fraction=0.4", "model.name=cnn", "model.channels=[32]",
          "model.hidden_units=[16]", "train.batch_size=4", "train.epochs=12", "optim.name=sgd", "optim.lr=0.01",
          "run.progress=off", "run.tensorboard=false", "checkpoint.every_epochs=0",
          "callbacks.user=[benchmarks.trainmem:RssProbe]"]


def test_rank_memory_is_flat_over_steps_and_evaluation_holds_no_more_than_a_step(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(200):  # 600 images: 360 to train on (45 steps a rank an epoch, 540 in all), 240 to evaluate
            Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(folder / f"class{c}" / f"{i}.jpg")
    shards = tmp_path / "shards"
    subprocess.run([sys.executable, "-m", "hvdtrain", "pack", str(folder), str(shards)], check=True, cwd=REPO,
                   capture_output=True)
    runs = {"torch": ("image_folder", folder, 1), "tensorflow": ("shards", shards, 0)}

    def job(backend: str) -> list[dict]:
        source, path, workers = runs[backend]
        probe = tmp_path / f"probe-{backend}"
        probe.mkdir()
        run_hvdtrain([*COMMON, f"backend={backend}", f"data.name={source}", f"data.path={path}",
                      f"data.workers={workers}", f"run.dir={tmp_path / backend}"], launcher="mpirun", np_=2,
                     env={PROBE_DIR_ENV: str(probe), EVERY_ENV: "1"})
        return [json.loads((probe / f"rank{r}.json").read_text()) for r in range(2)]

    found = dict(zip(runs, together(*(lambda b=b: job(b) for b in runs)), strict=True))
    for backend, ranks in found.items():
        for rank, probe in enumerate(ranks):
            steps = [row for row in probe["rows"] if row[3] == "step"]
            assert steps[-1][0] == 12 * 45, f"{backend} rank {rank}: {steps[-1][0]} steps"
            slope = slope_mb_per_step(probe["rows"])
            after_warmup = max(row[1] for row in steps if row[0] > 100)
            print(f"{backend} rank {rank}: slope {slope:+.4f} MB/step, RSS {steps[0][1]:.0f} -> {steps[-1][1]:.0f} "
                  f"MB, largest after step 100 {after_warmup:.0f} MB, peak {probe['rank_peak_mb']:.0f} MB, workers' "
                  f"peak {probe['workers_peak_mb']:.0f} MB ({probe['workers']})")
            assert slope < SLOPE_LIMIT, f"{backend} rank {rank} grows by {slope:.3f} MB a step"
            # The twelve evaluations (120 images a rank each) hold no more than the training steps around them.
            assert probe["rank_peak_mb"] < after_warmup + EVAL_MARGIN_MB, (backend, rank)
        # Child processes seen: the data worker and multiprocessing's resource tracker, or none without workers.
        assert [r["workers"] > 0 for r in ranks] == [runs[backend][2] > 0] * 2

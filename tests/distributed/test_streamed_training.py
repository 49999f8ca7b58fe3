"""Streamed data under real launchers (np=2): image folders and tar shards read per rank by data worker
processes, every sample once per epoch, the same weights whatever the number of workers, kill -9 and resume
mid-epoch, a truncated JPEG stopping every rank (or skipped and counted), your own dataset on both backends,
and peak memory flat in the dataset size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import run_pool
from conftest import REPO, max_weight_diff, read_metrics, read_summary, read_weights, run_hvdtrain, together
from PIL import Image
from run_pool import PoolRun

pytestmark = pytest.mark.distributed

SCRIPTS = REPO / "tests" / "scripts"
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 40, 10
COMMON = ["model.name=cnn", "model.channels=[8]", "model.hidden_units=[16]", "optim.name=adam", "optim.lr=0.01",
          "train.batch_size=8", "train.epochs=2", "data.image_size=[24,24]", "augment.rotation_range=10",
          "augment.horizontal_flip=true", "run.progress=off", "checkpoint.keep_last=0"]
RESUME_TOL = 1e-6


def write_jpegs(root: Path, per_class: int, seed: int, size: tuple[int, int] = (36, 48)) -> None:
    """Colour-coded classes (learnable in an epoch), camera-like aspect, noise so every file differs."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            base = np.full((*size, 3), 40.0)
            base[..., c] = 190
            pixels = np.clip(base + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.jpg", quality=90)


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """The module's uninterrupted np=2 runs, pooled with other modules' runs (tests/run_pool.py: they differ only
    in config), over the JPEG folder root/jpegs: torch's `reference` (two workers per rank, every sample logged),
    `threaded` (no workers) and `user-torch`; TensorFlow's `shards` (the folder packed into tar shards of 25) and
    `user-tensorflow` (your own dataset, stripes_data:build)."""
    folder = root / "jpegs"
    write_jpegs(folder / "train", TRAIN_PER_CLASS, 0)
    write_jpegs(folder / "val", VAL_PER_CLASS, 1)
    packed = subprocess.run([sys.executable, "-m", "hvdtrain", "pack", str(folder), str(root / "shards-data"),
                             "--shard-size", "25"], capture_output=True, text=True, cwd=REPO, check=True)
    assert "120 samples" in packed.stdout or "150 samples" in packed.stdout, packed.stdout
    (root / "stripes_data.py").write_text(USER_DATASET)
    images = [*COMMON, "data.name=image_folder", f"data.path={folder}"]
    user = ["model.name=cnn", "model.channels=[8]", "model.hidden_units=[16]", "optim.name=adam", "optim.lr=0.01",
            "train.batch_size=16", "train.epochs=3", "data.name=stripes_data:build", "data.workers=1",
            "run.progress=off"]
    on_torch = [[*images, "backend=torch", "data.workers=2", "data.log_samples=true", f"run.dir={root / 'reference'}"],
                [*images, "backend=torch", "data.workers=0", f"run.dir={root / 'threaded'}"],
                [*user, "backend=torch", f"run.dir={root / 'user-torch'}"]]
    on_tensorflow = [[*COMMON, "backend=tensorflow", "data.name=shards", f"data.path={root / 'shards-data'}",
                      "data.workers=1", "data.log_samples=true", f"run.dir={root / 'shards'}"],
                     [*user, "backend=tensorflow", f"run.dir={root / 'user-tensorflow'}"]]
    return ([PoolRun("torch", 2, tuple(a)) for a in on_torch]
            + [PoolRun("tensorflow", 2, tuple(a)) for a in on_tensorflow])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_pool.trained(__file__, tmp_path_factory)


@pytest.fixture(scope="module")
def folder(runs: Path) -> Path:
    """The JPEG folder the runs read: train/ (40 images a class) and val/ (10 a class)."""
    return runs / "jpegs"


@pytest.fixture(scope="module")
def reference(runs: Path) -> Path:
    """The uninterrupted torch run with two workers per rank, every sample logged."""
    return runs / "reference"


def samples_per_epoch(run_dir: Path, epoch: int) -> list[tuple[int, int, str]]:
    lines = (run_dir / "samples" / f"epoch-{epoch:03d}.tsv").read_text().splitlines()[1:]
    return [(int(r), int(b), name) for r, b, name in (line.split("\t") for line in lines)]


def assert_every_sample_once(run_dir: Path, names: set[str], batch: int) -> None:
    for epoch in (1, 2):
        rows = samples_per_epoch(run_dir, epoch)
        counts = Counter(name for _, _, name in rows)
        assert max(counts.values()) == 1, f"epoch {epoch}: a sample used twice"
        # 120 samples, 2 ranks x 8 per step: 7 whole steps, 8 samples left for a later epoch.
        assert len(rows) == 7 * 2 * batch and set(counts) <= names
        assert {r for r, _, _ in rows} == {0, 1}
        per_rank_batches = Counter((r, b) for r, b, _ in rows)
        assert set(per_rank_batches.values()) == {batch}
    assert [r[2] for r in samples_per_epoch(run_dir, 1)] != [r[2] for r in samples_per_epoch(run_dir, 2)]


def test_image_folder_trains_with_workers_every_sample_once(reference: Path, folder: Path) -> None:
    names = {str(p) for p in (folder / "train").glob("*/*.jpg")}
    assert_every_sample_once(reference, names, 8)
    summary, final = read_summary(reference), read_metrics(reference)[-1]
    assert final["val_accuracy"] >= 0.9 and final["skipped_samples"] == 0
    assert summary["world_size"] == 2 and summary["steps"] == 14
    for rank in summary["memory_mb_per_rank"]:
        assert 0 < rank["start"] <= rank["peak"]


def test_workers_do_not_change_the_weights(reference: Path, runs: Path) -> None:
    diff = max_weight_diff(read_weights(runs / "threaded"), read_weights(reference))
    print(f"workers 0 vs 2: max |dw| = {diff:.3g}")
    assert diff == 0.0


@pytest.mark.races
def test_kill_9_and_resume_mid_epoch_gives_the_uninterrupted_weights(reference: Path, folder: Path,
                                                                      tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    args = [*COMMON, "data.name=image_folder", f"data.path={folder}", "data.workers=2", f"run.dir={cut}",
            "checkpoint.every_steps=2", "train.resume=auto"]
    marker = tmp_path / "killed"
    env = {"PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_KILL_RANK": "1", "HVDTRAIN_TEST_KILL_STEP": "10",
           "HVDTRAIN_TEST_KILL_MARKER": str(marker)}
    killed = run_hvdtrain([*args, "callbacks.user=[fault_callbacks:Faults]"], launcher="mpirun", np_=2, env=env,
                          check=False)
    assert killed.returncode != 0 and marker.is_file(), killed.stderr[-2000:]
    run_hvdtrain(args, launcher="mpirun", np_=2)  # from the step-10 checkpoint, mid-epoch 2
    diff = max_weight_diff(read_weights(cut), read_weights(reference))
    print(f"resumed at step 10 of 14: max |w(resumed) - w(uninterrupted)| = {diff:.3g}")
    assert diff <= RESUME_TOL
    assert [m["epoch"] for m in read_metrics(cut)] == [1, 2]


def test_tar_shards_train_with_every_sample_once(runs: Path) -> None:
    shards, run_dir = runs / "shards-data", runs / "shards"
    index = [json.loads(p.read_text()) for p in sorted((shards / "train").glob("*.idx.json"))]
    names = {f"{p.name[:-len('.idx.json')]}:{k}" for p, i in zip(sorted((shards / "train").glob("*.idx.json")), index,
                                                                  strict=True) for k in i["keys"]}
    rows = samples_per_epoch(run_dir, 1)
    assert {name.rsplit("/", 1)[-1] for _, _, name in rows} <= names
    assert_every_sample_once(run_dir, {name for _, _, name in rows} | {n for _, _, n in samples_per_epoch(run_dir, 2)},
                             8)
    # Each rank's batch is a run of consecutive members of one or two shards: sequential reads.
    shards_per_batch = Counter((r, b) for r, b, name in {(r, b, name.split(":")[0]) for r, b, name in rows})
    assert max(shards_per_batch.values()) <= 2
    assert read_metrics(run_dir)[-1]["val_accuracy"] >= 0.9


@pytest.mark.races
def test_a_truncated_jpeg_stops_every_rank_or_is_skipped(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(folder), str(broken)], check=True)
    bad = broken / "train" / "class1" / "007.jpg"
    bad.write_bytes(bad.read_bytes()[:400])
    args = [*COMMON, "data.name=image_folder", f"data.path={broken}", "data.workers=1"]
    skipped = tmp_path / "skip"
    stopped, _ = together(
        lambda: run_hvdtrain([*args, f"run.dir={tmp_path / 'stop'}"], launcher="mpirun", np_=2, check=False),
        lambda: run_hvdtrain([*args, "backend=tensorflow", "data.on_error=skip", f"run.dir={skipped}"],
                             launcher="mpirun", np_=2))
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("hvdtrain: error:")]
    assert len(errors) == 2 and len(set(errors)) == 1, stopped.stderr[-3000:]  # the same line on both ranks
    assert str(bad) in errors[0] and "data.on_error=skip" in errors[0]
    assert "Traceback" not in stopped.stderr
    assert not (tmp_path / "stop" / "weights.npz").exists()

    metrics = read_metrics(skipped)
    # The bad file is in the training set: skipped once in each epoch where its step is taken, at most once.
    assert [m["skipped_samples"] for m in metrics] in ([1, 1], [1, 0], [0, 1])
    assert metrics[-1]["val_accuracy"] >= 0.9


USER_DATASET = '''
import numpy as np


class Stripes:
    """Horizontal (class 0) or vertical (class 1) stripes, uint8 arrays, made on read."""

    def __init__(self, n, seed):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        label = i % 2
        image = np.zeros((16, 16, 3), np.uint8)
        phase = rng.integers(0, 4)
        if label:
            image[:, phase::4] = 200
        else:
            image[phase::4, :] = 200
        return image + rng.integers(0, 40, image.shape).astype(np.uint8), label


def build(cfg):
    return {"train": Stripes(192, 0), "val": Stripes(64, 1), "class_names": ["horizontal", "vertical"]}
'''


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_user_dataset_by_import_path_trains(backend: str, runs: Path) -> None:
    run_dir = runs / f"user-{backend}"
    summary = read_summary(run_dir)
    assert summary["dataset"] == "stripes_data:build" and summary["world_size"] == 2
    assert summary["backend"] == backend
    assert read_metrics(run_dir)[-1]["val_accuracy"] >= 0.95


MEMORY_PROBE = """
import sys
import numpy as np
from hvdtrain.config import load_config
from hvdtrain.data import load_dataset, plan_epoch
from hvdtrain.data.pipeline import InputPipeline
from hvdtrain.reporting.outputs import peak_rss_mb
from hvdtrain.augment.pipeline import AugmentPipeline
cfg = load_config(None, ["data.name=image_folder", f"data.path={sys.argv[1]}", "data.image_size=[96,96]",
                         "train.batch_size=32", "data.val_fraction=0", "augment.rotation_range=10"])
dataset = load_dataset(cfg.data, 0)
plan = plan_epoch(len(dataset.train), rank=0, world_size=2, batch_size=32, seed=0, epoch=0)
with InputPipeline(cfg, dataset, 1) as inputs:
    transform = AugmentPipeline(cfg.augment, None, None).train_transform(0, 0, 0)
    seen = sum(len(y) for _, y in inputs.train_loader(plan.indices, transform))
print(seen, peak_rss_mb())
"""


def test_peak_memory_of_a_rank_is_flat_in_the_dataset_size(tmp_path: Path) -> None:
    """A rank's share of an epoch over 400 and 1,600 files: the training process holds file lists, never
    pixels (in memory as float32 the larger set alone would be 177 MB)."""
    peaks = {}
    for n in (400, 1600):
        root = tmp_path / str(n)
        rng = np.random.default_rng(n)
        for c in range(2):
            (root / f"c{c}").mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.jpg")
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(root)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        seen, peak = out.stdout.split()
        assert int(seen) == n // 64 * 32  # whole steps of 2 ranks x 32
        peaks[n] = float(peak)
    print(f"peak RSS of the training process: {peaks}")
    assert peaks[1600] <= 1.10 * peaks[400]

"""Streamed sources and the data worker pool, in process: the same batches whatever the number of workers,
worker death and hangs as errors, bad images stopped or skipped, memory-mapped arrays, user datasets."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hvdtrain.augment.pipeline import AugmentPipeline
from hvdtrain.config import load_config
from hvdtrain.data import ArraySource, SampleError, load_dataset, plan_epoch
from hvdtrain.data.images import decode_image
from hvdtrain.data.pipeline import InputPipeline, resolve_workers
from hvdtrain.errors import ConfigError, DataError

AUGMENT = ["augment.rotation_range=20", "augment.width_shift_range=0.1", "augment.horizontal_flip=true",
           "augment.zoom_range=0.1", "augment.featurewise_center=false"]


def write_folder(root: Path, per_class: int = 12, classes: int = 3,
                 sizes: tuple[tuple[int, int], ...] = ((30, 40), (44, 33))) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            pixels = np.clip(rng.normal(50 + 60 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.jpg", quality=90)
    return root


def epoch_batches(overrides: list[str], workers: int, epoch: int = 1, rank: int = 0, world: int = 2) -> list[tuple]:
    cfg = load_config(None, [*overrides, f"data.workers={workers}", "train.batch_size=5"])
    dataset = load_dataset(cfg.data, cfg.seed)
    plan = plan_epoch(len(dataset.train), rank=rank, world_size=world, batch_size=5, seed=cfg.seed, epoch=epoch,
                      order=dataset.train.epoch_order(cfg.seed, epoch, True))
    transform = AugmentPipeline(cfg.augment, None, None).train_transform(cfg.seed, rank, epoch)
    with InputPipeline(cfg, dataset, workers) as inputs, inputs.train_loader(plan.indices, transform) as loader:
        return [tuple(item) for item in loader]


def test_folder_batches_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    args = ["data.name=image_folder", f"data.path={root}", "data.image_size=[24,24]", *AUGMENT]
    runs = {w: epoch_batches(args, w) for w in (0, 1, 2)}
    assert len(runs[0]) == 2  # 29 training samples, 2 ranks x 5 per step: 2 whole steps
    for w in (1, 2):
        assert len(runs[w]) == len(runs[0])
        for (x0, y0), (xw, yw) in zip(runs[0], runs[w], strict=True):
            assert xw.dtype == np.float32 and xw.shape == (5, 24, 24, 3)
            np.testing.assert_array_equal(xw, x0)  # bit for bit: same draws, same kernel
            np.testing.assert_array_equal(yw, y0)


def test_streamed_pixels_are_the_decoded_files_uint8_until_the_model(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs", per_class=4)
    cfg = load_config(None, ["data.name=image_folder", f"data.path={root}", "data.image_size=[20,16]",
                             "data.val_fraction=0"])
    dataset = load_dataset(cfg.data, 0)
    x, y = dataset.train.read(np.array([0, 5, 11]))
    assert x.dtype == np.uint8 and x.shape == (3, 20, 16, 3) and y.tolist() == [0, 1, 2]
    files = sorted(root.glob("*/*.jpg"))
    np.testing.assert_array_equal(x[1], decode_image(str(files[5]), (20, 16), 3, "f"))
    assert dataset.train.describe(5) == str(files[5])
    pickled = pickle.dumps(dataset.train)
    assert len(pickled) < 4000  # a file list, never pixels
    assert np.array_equal(pickle.loads(pickled).read(np.array([5]))[0], x[1:2])


def test_train_and_val_folders_are_the_split_and_must_have_the_same_classes(tmp_path: Path) -> None:
    write_folder(tmp_path / "d" / "train", per_class=3)
    write_folder(tmp_path / "d" / "val", per_class=2)
    cfg = load_config(None, ["data.name=image_folder", f"data.path={tmp_path / 'd'}", "data.image_size=[8,8]"])
    dataset = load_dataset(cfg.data, 0)
    assert (len(dataset.train), len(dataset.val), dataset.class_names) == (9, 6, ("class0", "class1", "class2"))
    (tmp_path / "d" / "val" / "class9").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "val" / "class9" / "a.png")
    with pytest.raises(DataError, match="different classes .*only in val: class9.*same class folders"):
        load_dataset(cfg.data, 0)
    (tmp_path / "e" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "e" / "train" / "a" / "a.png")
    with pytest.raises(DataError, match="has train/ but no val/"):
        load_dataset(load_config(None, ["data.name=image_folder", f"data.path={tmp_path / 'e'}"]).data, 0)


@pytest.mark.races
def test_a_killed_worker_is_an_error_naming_it(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    cfg = load_config(None, ["data.name=image_folder", f"data.path={root}", "data.image_size=[24,24]",
                             "data.workers=2", "train.batch_size=2"])
    dataset = load_dataset(cfg.data, 0)
    with InputPipeline(cfg, dataset, 2) as inputs:
        assert inputs.pool is not None
        loader = inputs.train_loader(np.arange(len(dataset.train)), None)
        batches = iter(loader)
        next(batches)
        os.kill(inputs.pool.pids[1], signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(DataError, match=r"data worker 1 \(pid \d+\) was killed by signal 9 \(SIGKILL\)"):
            for _ in batches:
                pass
        assert time.monotonic() - start < 30


class SlowSource(ArraySource):
    """Hangs on one sample until the file `release` exists (60 s at most): a hung read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, release: Path) -> None:
        super().__init__(images, labels, name)
        self.release = release

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if 7 in indices:
            deadline = time.monotonic() + 60
            while not self.release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().read(indices)


@pytest.mark.races
def test_a_hung_worker_is_an_error_after_the_timeout(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.worker_timeout_s=2", "train.batch_size=4"])
    source = SlowSource(np.zeros((16, 4, 4, 1), np.float32), np.zeros(16, np.int64), "slow", tmp_path / "release")
    dataset = load_dataset(cfg.data, 0).__class__(source, source, ("a",))
    with InputPipeline(cfg, dataset, 1) as inputs:
        loader = inputs.train_loader(np.arange(16), None)
        start = time.monotonic()
        with pytest.raises(DataError, match=r"has not delivered batch 1 in [23] s \(data.worker_timeout_s=2\)"):
            list(loader)
        assert time.monotonic() - start < 20
        # The hang is proven: let the worker go, or closing the pool would wait 5 s for it before killing it.
        source.release.touch()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_stops_or_is_skipped_and_counted(tmp_path: Path, workers: int) -> None:
    root = write_folder(tmp_path / "imgs", per_class=4)
    bad = sorted(root.glob("class1/*.jpg"))[2]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-scan
    args = ["data.name=image_folder", f"data.path={root}", "data.image_size=[16,16]", "data.val_fraction=0",
            f"data.workers={workers}", "train.batch_size=4"]
    cfg = load_config(None, args)
    dataset = load_dataset(cfg.data, 0)
    with InputPipeline(cfg, dataset, workers) as inputs:
        with pytest.raises(SampleError, match=f"cannot read {bad} .*data.on_error=skip"):
            list(inputs.train_loader(np.arange(12), None))
    cfg = load_config(None, [*args, "data.on_error=skip"])
    with InputPipeline(cfg, dataset, workers) as inputs:
        loader = inputs.train_loader(np.arange(12), None)
        sizes = [len(y) for _, y in loader]
    assert sizes == [4, 3, 4] and loader.skipped == [str(bad)]


def test_npz_arrays_stay_uint8_and_are_memory_mapped(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 4)
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "x.npy", x)
    np.save(tmp_path / "npy" / "y.npy", np.arange(50) % 4)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.arange(50) % 4)
    for path, mapped in ((tmp_path / "d.npz", True), (tmp_path / "npy", True), (tmp_path / "c.npz", False)):
        cfg = load_config(None, ["data.name=npz", f"data.path={path}", "data.val_fraction=0.2"])
        dataset = load_dataset(cfg.data, 0)
        parent = dataset.train.parent  # type: ignore[attr-defined]
        assert parent.images.dtype == np.uint8 and isinstance(parent.images, np.memmap) == mapped, path
        images, labels = dataset.train.read(np.arange(len(dataset.train)))
        np.testing.assert_array_equal(images, x[dataset.train.indices])  # type: ignore[attr-defined]
        if mapped:  # workers get the file's name and layout, not its contents
            assert len(pickle.dumps(dataset.train)) < 2000
            np.testing.assert_array_equal(pickle.loads(pickle.dumps(dataset.train)).read(np.arange(3))[0],
                                          images[:3])


def test_workers_default_to_the_cores_left_for_on_disk_data_only() -> None:
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(None, False, 1, 1) == 0
    assert resolve_workers(None, True, 1, 1) == max(1, cores - 1)
    assert resolve_workers(None, True, cores, 1) == 1  # never 0: the training process does not decode
    assert resolve_workers(3, False, 1, 1) == 3


def test_framework_kernel_with_workers_is_refused(tmp_path: Path) -> None:
    cfg = load_config(None, ["augment.rotation_range=10", "augment.kernel=framework", "data.workers=1"])
    with pytest.raises(ConfigError, match="augment.kernel=framework .*data.workers=0"):
        InputPipeline(cfg, load_dataset(cfg.data, 0), 1)


USER_DATA = '''
import numpy as np
from PIL import Image

class Pictures:
    def __init__(self, n, offset):
        self.n, self.offset = n, offset
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        if i >= self.n:
            raise IndexError(i)
        if self.offset and i == 3:
            raise ValueError("sensor glitch")
        value = (i * 37 + self.offset) % 256
        return Image.new("RGB", (10 + i % 3, 8), (value, 0, 255 - value)), i % 2

def build(cfg):
    return {"train": Pictures(20, 0), "val": Pictures(6, 100), "class_names": ["even", "odd"]}

def broken(cfg):
    return {"train": Pictures(4, 0)}
'''


def test_user_dataset_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_pictures.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["data.name=user_pictures:build", "data.image_size=[8,8]", "data.workers=1"])
    dataset = load_dataset(cfg.data, 0)
    assert (len(dataset.train), len(dataset.val), dataset.class_names) == (20, 6, ("even", "odd"))
    x, y = dataset.train.read(np.array([0, 5]))
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.uint8 and y.tolist() == [0, 1]
    with InputPipeline(cfg, dataset, 1) as inputs:  # the worker rebuilds the dataset from its import path
        batches = list(inputs.train_loader(np.arange(20), None))
        assert [len(b[1]) for b in batches] == [20]  # train.batch_size=32
        assert np.array_equal(batches[0][0][0], x[0]) and np.array_equal(batches[0][0][5], x[1])
        with pytest.raises(SampleError, match=r"user_pictures:build val\[3\] \(ValueError: sensor glitch\)"):
            list(inputs.eval_loader(0, 1, None))
    with pytest.raises(DataError, match="returned no class_names"):
        load_dataset(load_config(None, ["data.name=user_pictures:broken"]).data, 0)
    with pytest.raises(DataError, match="cannot be imported"):
        load_dataset(load_config(None, ["data.name=no_such_module:build"]).data, 0)
    del sys.modules["user_pictures"]


USER_TABLE = '''
import numpy as np

class Rows:
    def __init__(self, n, target):
        self.n, self.target = n, target
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        x = np.arange(5, dtype=np.float64) + i
        return x, self.target(i)

def regression(cfg):
    return {"train": Rows(12, lambda i: [i / 2, -i]), "val": Rows(4, lambda i: [i, 0.5])}

def multilabel(cfg):
    return {"train": Rows(12, lambda i: [i % 2, i % 3 == 0, 1]), "class_names": ["odd", "three", "all"]}

def ragged(cfg):
    return {"train": Rows(12, lambda i: [1.0] * (1 + i % 2))}
'''


def test_user_dataset_of_feature_vectors_with_the_tasks_targets(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_table.py").write_text(USER_TABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    regression = load_dataset(load_config(None, ["data.name=user_table:regression"]).data, 0, "regression")
    assert regression.image_shape == (5,) and regression.class_names == ("target0", "target1")
    x, y = regression.train.read(np.array([0, 3]))
    assert x.dtype == np.float32 and x[1].tolist() == [3, 4, 5, 6, 7]
    assert y.dtype == np.float32 and y.tolist() == [[0.0, 0.0], [1.5, -3.0]]
    multilabel = load_dataset(load_config(None, ["data.name=user_table:multilabel", "data.val_fraction=0.25"]).data,
                              0, "multilabel")
    assert multilabel.class_names == ("odd", "three", "all") and len(multilabel.val) == 3
    _, y = multilabel.train.parent.read(np.array([3, 4]))  # type: ignore[attr-defined]
    assert y.tolist() == [[1, 1, 1], [0, 0, 1]]
    ragged = load_dataset(load_config(None, ["data.name=user_table:ragged", "data.val_fraction=0"]).data, 0,
                          "regression")
    with pytest.raises(DataError, match=r"train\[1\] has target \[1.0, 1.0\]: task=regression needs"):
        ragged.train.read(np.array([0, 1]))
    with pytest.raises(DataError, match="holds class labels, but task=regression"):
        load_dataset(load_config(None, ["data.name=digits"]).data, 0, "regression")
    del sys.modules["user_table"]

"""Data sources, per-rank sharding and the background loader."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_arrays import arrays
from PIL import Image

from hvdtrain.config import DataConfig
from hvdtrain.data import BatchLoader, SampleError, plan_epoch, shard_for_eval
from hvdtrain.data import load_dataset as load_sources
from hvdtrain.errors import ConfigError, DataError


def Data(**changes: Any) -> DataConfig:  # noqa: N802 - reads like the dataclass it builds
    """A data section with small test defaults."""
    return DataConfig(**{"synthetic_samples": 64, "synthetic_shape": (6, 5, 3), "num_classes": 4, **changes})


def load_dataset(cfg: DataConfig, seed: int) -> Any:
    """The dataset read whole into arrays (float32 pixels), as the assertions below want them."""
    return arrays(load_sources(cfg, seed))


# ------------------------------------------------------------------------------------------ sources

def test_digits_are_scikit_learns_without_importing_it() -> None:
    """The file is read directly (scikit-learn's import costs a second in every rank): the same images and
    labels as `load_digits`, in the same order, and no sklearn module loaded by the read itself."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    ds = load_sources(Data(val_fraction=0.0), seed=0)
    reference = load_digits()
    x, y = arrays(ds).x_train, arrays(ds).y_train
    assert np.array_equal(x[..., 0], (reference.images / 16.0).astype(np.float32))
    assert np.array_equal(y, reference.target) and y.dtype == reference.target.dtype
    probe = ("import sys; from hvdtrain.config import DataConfig; from hvdtrain.data import load_dataset; "
             "load_dataset(DataConfig(), 0); print(sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_digits_split_is_deterministic_and_disjoint() -> None:
    ds = load_dataset(Data(), seed=1)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert len(ds.y_train) + len(ds.y_val) == 1797 and len(ds.y_val) == round(1797 * 0.2)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.9
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10
    again, other = load_dataset(Data(), seed=1), load_dataset(Data(), seed=2)
    assert np.array_equal(again.x_val, ds.x_val) and not np.array_equal(other.x_val, ds.x_val)
    rows = {r.tobytes() for r in ds.x_train.reshape(len(ds.x_train), -1)}
    assert sum(r.tobytes() in rows for r in ds.x_val.reshape(len(ds.x_val), -1)) < 5  # digits has a few duplicates


def test_synthetic_is_seeded_and_learnable() -> None:
    a = load_dataset(Data(name="synthetic", val_fraction=0.0), seed=3)
    b = load_dataset(Data(name="synthetic", val_fraction=0.0), seed=3)
    assert a.x_train.shape == (64, 6, 5, 3) and len(a.y_val) == 0 and a.x_val.shape[1:] == (6, 5, 3)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    means = [a.x_train[a.y_train == c].mean() for c in range(4) if (a.y_train == c).any()]
    assert means == sorted(means)  # brighter with the class index


def test_npz_uint8_float_and_explicit_validation(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 4, 4), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(20) % 3)
    ds = load_dataset(Data(name="npz", path=str(path), val_fraction=0.25), seed=0)
    assert ds.x_train.shape == (15, 4, 4, 1) and len(ds.y_val) == 5 and ds.num_classes == 3
    assert np.allclose(np.sort(np.concatenate([ds.x_train, ds.x_val]).ravel()), np.sort(x.ravel() / 255.0))
    xf = rng.random((10, 4, 4, 2)).astype(np.float64)
    np.savez(path, x=xf, y=np.zeros(10, dtype=np.int32), x_val=xf[:3], y_val=np.array([0, 1, 4]))
    ds = load_dataset(Data(name="npz", path=str(path)), seed=0)
    assert len(ds.y_train) == 10 and len(ds.y_val) == 3 and ds.num_classes == 5
    assert np.allclose(ds.x_train, xf.astype(np.float32))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: None, "data.path is required"),
    (lambda p: str(p / "missing.npz"), "does not exist"),
    (lambda p: (p / "bad.npz").write_bytes(b"not a zip at all") and str(p / "bad.npz"), "not a readable .npz"),
    (lambda p: np.savez(p / "k.npz", images=np.zeros((2, 2, 2))) or str(p / "k.npz"), "needs arrays 'x' and 'y'"),
    (lambda p: np.savez(p / "n.npz", x=np.zeros((3, 2, 2)), y=np.zeros(2, int)) or str(p / "n.npz"),
     "labels must be 3 integers"),
    # (N, F) is feature vectors (docs/tasks.md); five axes are neither those nor images.
    (lambda p: np.savez(p / "d.npz", x=np.zeros((3, 2, 2, 2, 1)), y=np.zeros(3, int)) or str(p / "d.npz"),
     "expected (N, F) feature vectors, or (N, H, W) or (N, H, W, C) images"),
    (lambda p: np.savez(p / "m.npz", x=np.zeros((3, 2, 2)), y=np.array([0, -1, 2])) or str(p / "m.npz"),
     "labels must be >= 0"),
    (lambda p: np.savez(p / "v.npz", x=np.zeros((3, 2, 2)), y=np.zeros(3, int), x_val=np.zeros((1, 2, 2)))
     or str(p / "v.npz"), "only one of 'x_val' and 'y_val'"),
])
def test_npz_errors_name_the_problem(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(Data(name="npz", path=make(tmp_path)), seed=0)
    assert fragment in str(info.value) and "data.path" in str(info.value)


def _folder(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "RGB") -> Path:
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.new(mode, (w, h), color=(40 * i) if mode == "L" else (10 * i, 50, 200)).save(
                root / cls / f"{i}.{'png' if i % 2 else 'JPG'}")
    return root


def test_image_folder_labels_channels_and_resize(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": [(6, 4)] * 3, "dog": [(6, 4)] * 2})
    ds = load_dataset(Data(name="image_folder", path=str(root), val_fraction=0.0), seed=0)
    assert ds.class_names == ("cat", "dog") and ds.x_train.shape == (5, 6, 4, 3)
    assert sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1]
    assert np.isclose(ds.x_train[..., 2].max(), 200 / 255, atol=0.02)
    resized = load_dataset(Data(name="image_folder", path=str(root), val_fraction=0.0, image_size=(3, 5)), 0)
    assert resized.x_train.shape == (5, 3, 5, 3)
    gray = _folder(tmp_path / "gray", {"a": [(4, 4)] * 2, "b": [(4, 4)]}, mode="L")
    assert load_dataset(Data(name="image_folder", path=str(gray), val_fraction=0.0), 0).x_train.shape[-1] == 1
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders and stray files are not classes or images
    (root / "cat" / "notes.txt").write_text("x")
    assert load_dataset(Data(name="image_folder", path=str(root), val_fraction=0.0), 0).num_classes == 2


def test_image_folder_errors(tmp_path: Path) -> None:
    def load(path: Path) -> None:
        load_dataset(Data(name="image_folder", path=str(path), val_fraction=0.0), seed=0)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load(tmp_path / "empty")
    root = _folder(tmp_path / "a", {"x": [(4, 4)]})
    (root / "y").mkdir()
    with pytest.raises(DataError, match="class folder 'y' has no"):
        load(root)
    (root / "y" / "broken.png").write_bytes(b"\x89PNG not really")
    # Streamed: a bad image is found when it is read, and named.
    broken = load_sources(Data(name="image_folder", path=str(root), val_fraction=0.0), seed=0)
    with pytest.raises(SampleError, match="cannot read .*broken.png .*data.on_error=skip"):
        broken.train.read(np.arange(len(broken.train)))
    mixed = _folder(tmp_path / "m", {"x": [(4, 4), (5, 4)]})
    mixed_sources = load_sources(Data(name="image_folder", path=str(mixed), val_fraction=0.0), seed=0)
    with pytest.raises(SampleError, match=r"1.png .*set data.image_size=\[H, W\]"):
        mixed_sources.train.read(np.arange(2))
    with pytest.raises(DataError, match="not a folder"):
        load(tmp_path / "a" / "x" / "0.JPG")


def test_unknown_source_and_empty_training_set() -> None:
    with pytest.raises(ConfigError, match="did you mean 'image_folder'.*data.name=my_pkg.data:build"):
        Data(name="imagenet")
    with pytest.raises(DataError, match="no training samples"):
        load_dataset(Data(name="synthetic", synthetic_samples=1, val_fraction=0.9), seed=0)


# ------------------------------------------------------------------------------------------ sharding

def test_two_ranks_see_the_samples_of_one_rank_with_double_batch() -> None:
    single = plan_epoch(103, rank=0, world_size=1, batch_size=8, seed=5, epoch=2)
    plans = [plan_epoch(103, rank=r, world_size=2, batch_size=4, seed=5, epoch=2) for r in range(2)]
    assert single.steps == plans[0].steps == plans[1].steps == 12
    for step in range(12):
        union = np.concatenate([p.indices[step * 4:(step + 1) * 4] for p in plans])
        assert np.array_equal(union, single.indices[step * 8:(step + 1) * 8])
    assert not set(plans[0].indices) & set(plans[1].indices)


def test_uneven_shards_take_equal_steps_and_drop_the_remainder() -> None:
    plans = [plan_epoch(101, rank=r, world_size=3, batch_size=4, seed=0, epoch=0) for r in range(3)]
    assert [p.steps for p in plans] == [8, 8, 8]
    assert all(len(p.indices) == 32 and p.dropped == 5 for p in plans)
    used = np.concatenate([p.indices for p in plans])
    assert len(set(used.tolist())) == 96
    capped = plan_epoch(101, rank=0, world_size=3, batch_size=4, seed=0, epoch=0, max_steps=3)
    assert capped.steps == 3 and len(capped.indices) == 12 and capped.dropped == 101 - 36
    assert np.array_equal(capped.indices, plans[0].indices[:12])


def test_epochs_reshuffle_and_unshuffled_order() -> None:
    a = plan_epoch(50, rank=0, world_size=1, batch_size=10, seed=0, epoch=0)
    b = plan_epoch(50, rank=0, world_size=1, batch_size=10, seed=0, epoch=1)
    assert not np.array_equal(a.indices, b.indices)
    ordered = plan_epoch(50, rank=1, world_size=2, batch_size=5, seed=0, epoch=0, shuffle=False)
    assert ordered.indices[:5].tolist() == [5, 6, 7, 8, 9]


def test_too_few_samples_and_bad_arguments() -> None:
    with pytest.raises(DataError, match="fewer than one global batch"):
        plan_epoch(7, rank=0, world_size=2, batch_size=4, seed=0, epoch=0)
    with pytest.raises(ValueError):
        plan_epoch(10, rank=2, world_size=2, batch_size=1, seed=0, epoch=0)
    with pytest.raises(ValueError):
        plan_epoch(10, rank=0, world_size=1, batch_size=0, seed=0, epoch=0)


def test_eval_shards_cover_every_sample_once() -> None:
    parts = [shard_for_eval(11, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]


# ------------------------------------------------------------------------------------------ loader

def _arrays(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n * 2, dtype=np.float32).reshape(n, 1, 1, 2), np.arange(n)


def test_loader_yields_batches_in_order() -> None:
    x, y = _arrays()
    idx = np.array([9, 0, 3, 4, 7, 1, 2])
    loader = BatchLoader(x, y, idx, batch_size=3)
    batches = list(loader)
    assert len(loader) == 3 and [b[1].tolist() for b in batches] == [[9, 0, 3], [4, 7, 1], [2]]
    assert all(b[0].flags["C_CONTIGUOUS"] for b in batches)
    assert loader.wait_seconds >= 0.0


def test_loader_applies_transform_in_worker() -> None:
    x, y = _arrays()
    threads = set()

    def double(xb: np.ndarray, yb: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        threads.add(threading.current_thread().name)
        return xb * 2, yb + 100 * i

    out = list(BatchLoader(x, y, np.arange(4), batch_size=2, transform=double))
    assert out[1][1].tolist() == [102, 103] and out[0][0][1, 0, 0, 1] == 6.0
    assert threads == {"hvdtrain-loader"}


def test_loader_reraises_worker_errors() -> None:
    x, y = _arrays()

    def boom(xb: np.ndarray, yb: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i == 1:
            raise RuntimeError("bad batch")
        return xb, yb

    with pytest.raises(RuntimeError, match="bad batch"):
        list(BatchLoader(x, y, np.arange(10), batch_size=2, transform=boom))


def test_loader_early_break_stops_the_worker() -> None:
    x, y = _arrays(1000)
    loader = BatchLoader(x, y, np.arange(1000), batch_size=1, prefetch=1)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    deadline = time.monotonic() + 2
    while any(t.name == "hvdtrain-loader" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "hvdtrain-loader" for t in threading.enumerate())


def test_dataclass_config_is_accepted() -> None:
    from hvdtrain.config import DataConfig

    cfg = replace(DataConfig(), name="synthetic", synthetic_samples=30, synthetic_shape=(4, 4, 1))
    assert load_dataset(cfg, seed=0).x_train.shape == (24, 4, 4, 1)


def _loader_threads() -> int:
    return sum(t.name == "hvdtrain-loader" for t in threading.enumerate())


def _wait_for_no_loader_threads(timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while _loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _loader_threads() == 0


def _within(seconds: float, fn):
    """fn() run in a daemon thread, so a hang fails the test instead of blocking the suite."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds}s"
    return result[0]


def test_loader_can_be_iterated_again_and_closed_twice() -> None:
    x, y = _arrays()
    with BatchLoader(x, y, np.arange(5), batch_size=2) as loader:
        first = _within(5, lambda: [b[1].tolist() for b in loader])
        second = _within(5, lambda: [b[1].tolist() for b in loader])  # not stuck on the first pass's stop
    assert first == second == [[0, 1], [2, 3], [4]]
    loader.close()
    loader.close()
    _wait_for_no_loader_threads()


def test_loader_close_inside_the_loop_ends_it() -> None:
    x, y = _arrays(1000)
    loader = BatchLoader(x, y, np.arange(1000), batch_size=1, prefetch=2)

    def consume() -> int:
        seen = 0
        for _ in loader:
            seen += 1
            if seen == 3:
                loader.close()
        return seen

    assert 3 <= _within(5, consume) <= 6  # at most the batches already queued when close() ran
    _wait_for_no_loader_threads()


def test_abandoned_iterator_stops_the_worker() -> None:
    x, y = _arrays(1000)
    it = iter(BatchLoader(x, y, np.arange(1000), batch_size=1, prefetch=1))
    assert next(it)[1].tolist() == [0]
    del it  # garbage collection closes the generator, which stops its worker
    _wait_for_no_loader_threads()

"""data.name=shards: packing an image folder, reading the shards back (pixels and labels), the shard epoch
order, foreign tars without an index, the path forms, pickling, and every one-line error."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hvdtrain.commands.pack import pack_folder
from hvdtrain.data.images import decode_image
from hvdtrain.data.sharding import plan_epoch
from hvdtrain.data.shards import ShardSource, expand_braces, index_path, open_shards, shard_epoch_order
from hvdtrain.data.source import SampleError
from hvdtrain.errors import DataError

CLASSES = ("cat", "dog", "emu")
SIZES = ((20, 24), (16, 16), (24, 18))


def image_bytes(rng: np.random.Generator, size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    from PIL import Image

    shape = (*size, 3) if mode == "RGB" else size
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path, per_class: int = 10, seed: int = 0) -> list[Path]:
    """root/<class>/<class>_<i>.jpg|png, images of a few sizes (unique stems, to find them by key)."""
    rng = np.random.default_rng(seed)
    files = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            fmt, suffix = (("JPEG", ".jpg"), ("PNG", ".png"))[i % 2]
            path = root / name / f"{name}_{i}{suffix}"
            path.write_bytes(image_bytes(rng, SIZES[(i + c) % len(SIZES)], fmt))
            files.append(path)
    return files


def cfg(path: Path | str, image_size: tuple[int, int] | None = (16, 16)) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), image_size=image_size)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("shards")
    files = make_folder(root / "images")
    pack_folder(root / "images", root / "shards", shard_size=8, seed=3)
    return root / "shards", files


def original_of(source: ShardSource, index: int, files: list[Path]) -> Path:
    """The image file a packed sample came from (the key ends with the file's stem)."""
    key = source.describe(index).rpartition(":")[2]
    (match,) = [f for f in files if key.endswith("_" + f.stem)]
    return match


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pack_writes_shards_indexes_and_classes(packed: tuple[Path, list[Path]]) -> None:
    out, _ = packed
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-{i:06d}.tar" for i in range(4)]  # 30 / 8
    assert all(index_path(p).is_file() for p in out.glob("*.tar"))
    assert (out / "classes.txt").read_text().split() == list(CLASSES)
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 16 and names[1] == names[0].split(".")[0] + ".cls"
    # Shuffled across shards: the first shard mixes classes.
    train, _, _ = open_shards(cfg(out))
    assert len(set(train.labels[:8].tolist())) > 1


def test_every_sample_reads_back_as_its_original(packed: tuple[Path, list[Path]]) -> None:
    out, files = packed
    train, val, names = open_shards(cfg(out))
    assert val is None and names == CLASSES and len(train) == 30 and train.on_disk
    assert train.image_shape == (16, 16, 3)
    images, labels = train.read(np.arange(len(train)))
    assert images.dtype == np.uint8 and images.shape == (30, 16, 16, 3)
    for i in range(len(train)):
        original = original_of(train, i, files)
        assert labels[i] == train.labels[i] == CLASSES.index(original.parent.name)
        np.testing.assert_array_equal(images[i], decode_image(original, (16, 16), 3, str(original)))
    assert sorted(str(original_of(train, i, files)) for i in range(30)) == sorted(map(str, files))


def test_epoch_order_is_a_deterministic_permutation_of_sequential_runs(packed: tuple[Path, list[Path]]) -> None:
    train, _, _ = open_shards(cfg(packed[0]))
    first = train.epoch_order(seed=5, epoch=0, shuffle=True)
    assert sorted(first.tolist()) == list(range(len(train)))
    np.testing.assert_array_equal(first, train.epoch_order(seed=5, epoch=0, shuffle=True))
    assert not np.array_equal(first, train.epoch_order(seed=5, epoch=1, shuffle=True))
    np.testing.assert_array_equal(train.epoch_order(seed=5, epoch=0, shuffle=False), np.arange(len(train)))

    # Cut like plan_epoch (world 2, batch 3): a rank's slice is one run of consecutive members of one shard
    # (cyclically), except that it may cross into the next shard once.
    counts = np.array([8, 8, 8, 6])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shard = np.searchsorted(starts, np.arange(30), side="right") - 1
    world, batch = 2, 3
    for epoch in range(5):
        order = train.epoch_order(seed=1, epoch=epoch, shuffle=True)
        for step in range(len(order) // (world * batch)):
            for rank in range(world):
                part = order[step * world * batch + rank * batch:][:batch]
                breaks = 0
                for a, b in zip(part[:-1], part[1:], strict=True):
                    s = shard[a]
                    follows = shard[b] == s and (b - starts[s]) == (a - starts[s] + 1) % counts[s]
                    breaks += not follows
                assert breaks <= 1, (epoch, step, rank, part)


def test_plan_epoch_over_the_shard_order_matches_one_rank(packed: tuple[Path, list[Path]]) -> None:
    train, _, _ = open_shards(cfg(packed[0]))
    order = train.epoch_order(seed=2, epoch=4, shuffle=True)
    one = plan_epoch(len(train), rank=0, world_size=1, batch_size=6, seed=2, epoch=4, order=order)
    two = [plan_epoch(len(train), rank=r, world_size=2, batch_size=3, seed=2, epoch=4, order=order)
           for r in range(2)]
    per_step = np.stack([p.indices.reshape(-1, 3) for p in two], axis=1).reshape(-1, 6)
    np.testing.assert_array_equal(per_step, one.indices.reshape(-1, 6))
    resumed = plan_epoch(len(train), rank=1, world_size=2, batch_size=3, seed=2, epoch=4, order=order, start=12)
    np.testing.assert_array_equal(resumed.indices, two[1].indices[6:])


def test_shard_epoch_order_handles_empty_shards() -> None:
    order = shard_epoch_order(np.array([3, 0, 2]), seed=0, epoch=2, shuffle=True)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]


def test_pickled_source_has_no_handle_and_reads(packed: tuple[Path, list[Path]]) -> None:
    train, _, _ = open_shards(cfg(packed[0]))
    expected, _ = train.read(np.arange(5))  # opens (and caches) a handle
    blob = pickle.dumps(train)
    assert len(blob) < 10_000
    copy = pickle.loads(blob)
    images, labels = copy.read(np.arange(5))
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, train.labels[:5])
    train.close()


def test_train_val_layout_and_size_from_first_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("val", 3)):
        for c, name in enumerate(CLASSES[:2]):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "images" / split / name / f"{split}{c}{i}.png").write_bytes(
                    image_bytes(rng, (12, 10), "PNG", "L"))
    pack_folder(tmp_path / "images", tmp_path / "out", shard_size=5)
    train, val, names = open_shards(cfg(tmp_path / "out", image_size=None))
    assert val is not None and (len(train), len(val)) == (12, 6) and names == CLASSES[:2]
    assert train.image_shape == val.image_shape == (12, 10, 1)  # grey, size of the first image
    images, labels = val.read(np.arange(6))
    assert images.shape == (6, 12, 10, 1) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_mismatched_size_without_image_size_names_the_sample(packed: tuple[Path, list[Path]]) -> None:
    train, _, _ = open_shards(cfg(packed[0], image_size=None))
    with pytest.raises(SampleError, match=r"shard-\d+\.tar:\d+_\w+ .*set data.image_size"):
        train.read(np.arange(len(train)))


def test_foreign_tar_without_index_is_scanned(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pixels = [image_bytes(rng, (8, 8), "PNG") for _ in range(3)]
    write_tar(tmp_path / "a.tar", [("./x/s1.cls", b"1\n"), ("./x/s1.png", pixels[0]), ("./x/s1.json", b"{}"),
                                   ("s2.jpeg", image_bytes(rng, (8, 8), "JPEG")), ("s2.cls", b" 0 "),
                                   (".hidden.png", pixels[2])])
    write_tar(tmp_path / "b.tar", [("s3.PNG", pixels[1]), ("s3.cls", b"2")])
    train, val, names = open_shards(cfg(tmp_path, image_size=None))
    assert not index_path(tmp_path / "a.tar").exists()  # opening never writes
    assert val is None and names == ("0", "1", "2") and len(train) == 3
    assert [train.describe(i) for i in range(3)] == [f"{tmp_path}/a.tar:x/s1", f"{tmp_path}/a.tar:s2",
                                                     f"{tmp_path}/b.tar:s3"]
    images, labels = train.read(np.array([2, 0]))
    assert labels.tolist() == [2, 1]
    np.testing.assert_array_equal(images[0], decode_image(pixels[1], None, 3, "s3"))


def test_brace_pattern_and_single_file(packed: tuple[Path, list[Path]]) -> None:
    out, _ = packed
    assert expand_braces("a{08..10}b{1..2}.tar") == ["a08b1.tar", "a08b2.tar", "a09b1.tar", "a09b2.tar",
                                                   "a10b1.tar", "a10b2.tar"]
    train, _, names = open_shards(cfg(f"{out}/shard-{{000001..000002}}.tar"))
    assert len(train) == 16 and names == CLASSES  # classes.txt next to the shards
    single, _, _ = open_shards(cfg(out / "shard-000003.tar"))
    assert len(single) == 6


def test_stale_index_is_ignored(packed: tuple[Path, list[Path]], tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes((packed[0] / "shard-000000.tar").read_bytes())
    document = json.loads(index_path(packed[0] / "shard-000000.tar").read_text())
    true_labels = document["labels"]
    document["labels"] = [9] * len(true_labels)  # wrong, but the tar's size matches: the index is trusted
    index_path(shard).write_text(json.dumps(document))
    train, _, names = open_shards(cfg(shard))
    assert train.labels.tolist() == [9] * 8
    with shard.open("ab") as f:
        f.write(b"\0" * 1024)  # the tar changed: its index no longer applies, the tar is scanned
    train, _, _ = open_shards(cfg(shard))
    assert train.labels.tolist() == true_labels
    index_path(shard).write_text("{not json")
    assert open_shards(cfg(shard))[0].labels.tolist() == true_labels


def test_truncated_member_is_a_sample_error_at_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    good, bad = image_bytes(rng, (32, 32), "JPEG"), image_bytes(rng, (32, 32), "JPEG")
    write_tar(tmp_path / "shard-000000.tar", [("k0.jpg", good), ("k0.cls", b"0"),
                                              ("k1.jpg", bad[:len(bad) // 2]), ("k1.cls", b"1")])
    train, _, _ = open_shards(cfg(tmp_path))
    assert train.read(np.array([0]))[0].shape == (1, 16, 16, 3)
    with pytest.raises(SampleError, match=r"cannot read .*shard-000000\.tar:k1 \("):
        train.read(np.array([0, 1]))


def packed_copy(packed: tuple[Path, list[Path]], tmp_path: Path, shards: int = 1) -> Path:
    for i in range(shards):
        name = f"shard-{i:06d}.tar"
        (tmp_path / name).write_bytes((packed[0] / name).read_bytes())
    return tmp_path


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", r"data.path=.*/nope does not exist: set data.path"),
    ("empty_path", r"data.path is required for data.name=shards"),
    ("no_tars", r"has no \.tar files: .*hvdtrain pack"),
    ("not_tar", r"is not an uncompressed tar file"),
    ("truncated", r"shard .*shard-000000\.tar is truncated"),
    ("no_image", r"unknown shard layout: .*sample 'k1' \(k1\.cls\) has no image: expected KEY\.jpg"),
    ("no_cls", r"unknown shard layout: .*'k0' \(k0\.png\) has no \.cls member: expected"),
    ("label_text", r"k0\.cls holds 'cat', not an integer class index"),
    ("two_images", r"sample 'k0' has more than one image"),
    ("classes_differ", r"list different classes .*only in the second: fox"),
    ("val_beyond_train", r"validation sample .*:k0 has class index 5, beyond the training shards' classes 0\.\.1"),
    ("beyond_classes_txt", r"training sample .* has class index \d, but classes\.txt lists 2 classes"),
    ("pattern_none", r"the pattern matches no files"),
    ("pattern_some", r"1 of the 2 shards do not exist"),
    ("train_no_val", r"has train/ but no val/"),
])
def test_errors_are_one_line(setup: str, message: str, packed: tuple[Path, list[Path]], tmp_path: Path) -> None:
    png = image_bytes(np.random.default_rng(0), (8, 8), "PNG")
    path: Path | str = tmp_path
    if setup == "missing":
        path = tmp_path / "nope"
    elif setup == "empty_path":
        path = ""
    elif setup == "no_tars":
        (tmp_path / "notes.txt").write_text("x")
    elif setup == "not_tar":
        (tmp_path / "a.tar").write_bytes(b"this is not a tar file at all" * 40)
    elif setup == "truncated":
        data = (packed[0] / "shard-000000.tar").read_bytes()
        (tmp_path / "shard-000000.tar").write_bytes(data[:len(data) // 2])
        # Its index (copied too) names a larger tar: the shard is scanned, and found truncated.
        index_path(tmp_path / "shard-000000.tar").write_bytes(index_path(packed[0] / "shard-000000.tar").read_bytes())
    elif setup == "no_image":
        write_tar(tmp_path / "a.tar", [("k0.png", png), ("k0.cls", b"0"), ("k1.cls", b"1")])
    elif setup == "no_cls":
        write_tar(tmp_path / "a.tar", [("k0.png", png)])
    elif setup == "label_text":
        write_tar(tmp_path / "a.tar", [("k0.png", png), ("k0.cls", b"cat")])
    elif setup == "two_images":
        write_tar(tmp_path / "a.tar", [("k0.png", png), ("k0.jpg", png), ("k0.cls", b"0")])
    elif setup in ("classes_differ", "val_beyond_train"):
        for split, label in (("train", b"1"), ("val", b"5" if setup == "val_beyond_train" else b"1")):
            (tmp_path / split).mkdir()
            write_tar(tmp_path / split / "a.tar", [("k0.png", png), ("k0.cls", label)])
        if setup == "classes_differ":
            (tmp_path / "train" / "classes.txt").write_text("cat\ndog\n")
            (tmp_path / "val" / "classes.txt").write_text("cat\nfox\n")
    elif setup == "beyond_classes_txt":
        packed_copy(packed, tmp_path)
        (tmp_path / "classes.txt").write_text("cat\ndog\n")
    elif setup == "pattern_none":
        path = f"{tmp_path}/shard-{{000000..000003}}.tar"
    elif setup == "pattern_some":
        packed_copy(packed, tmp_path)
        path = f"{tmp_path}/shard-{{000000..000001}}.tar"
    elif setup == "train_no_val":
        (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=message) as caught:
        open_shards(cfg(path))
    assert "\n" not in str(caught.value)

"""`data.name: shards`: WebDataset-style tar shards, read by seeking to each image (only the index is in memory).

A sample is the set of regular tar members that share a key (the member name up to the first dot of its
basename): one image, KEY.jpg / KEY.jpeg / KEY.png, and its class, KEY.cls (the class index as text). Other
members of a sample (KEY.json, ...) are ignored, and so are names whose basename starts with a dot.

data.path is one of:
    DIR                     its *.tar files, sorted by name (split by data.val_fraction)
    DIR with train/ and val/ (or validation/) sub-directories of *.tar files   the split is given
    /data/shards-{000000..000009}.tar   a brace pattern of zero-padded ranges (every name must exist)
    /data/shard.tar         one shard
Class names come from classes.txt next to the shards (one name per line), else they are "0".."K-1".

Each shard X.tar may have an index, X.tar.idx.json (written by `hvdtrain pack`): per sample its key, the
offset and size of the image member's bytes and the label. A shard without a valid index (written by another
tool, or changed since) is scanned once at open: tar headers only, plus the few bytes of each .cls member.
The epoch order (`shard_epoch_order`) keeps reads sequential: shards in a random order, each shard's samples
in stored order from a random starting point. See docs/shards.md.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.data.images import channels_of, decode_image
from hvdtrain.data.source import SampleError
from hvdtrain.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
LABEL_EXTENSION = "cls"
INDEX_SUFFIX = ".idx.json"
INDEX_FORMAT = "hvdtrain-shard-index"
INDEX_VERSION = 1
CLASSES_FILE = "classes.txt"
VAL_DIRS = ("val", "validation")
# The third word of the order's seed: keeps the shard order's random stream apart from the per-sample
# permutation of hvdtrain/data/sharding.py, which is seeded with [seed, epoch].
ORDER_STREAM = 0x5AD5
_MAX_LABEL_BYTES = 32
_EXPECTED = "expected KEY.jpg/.jpeg/.png plus KEY.cls (the class index as text) for every sample"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class ShardIndex:
    """The samples of one shard in stored order: key, offset and size of the image bytes, class index."""

    path: str
    keys: np.ndarray     # (n,) bytes: one buffer, not a Python string per sample
    offsets: np.ndarray  # (n,) int64, byte offset of the image member's data in the tar
    sizes: np.ndarray    # (n,) int64
    labels: np.ndarray   # (n,) int64


def index_path(shard: str | Path) -> Path:
    """Where the index of `shard` lives: X.tar -> X.tar.idx.json."""
    return Path(f"{shard}{INDEX_SUFFIX}")


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: 'a/b.seg.png' -> ('a/b', 'seg.png'); the extension is lower case."""
    directory, _, base = name.removeprefix("./").rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def scan_shard(path: str) -> ShardIndex:
    """The index of a tar shard, read from its headers (and .cls members); DataError for a shard that is not
    an uncompressed tar, is truncated or has a sample without exactly one image and one class."""
    file_bytes = os.path.getsize(path)
    images: dict[str, tuple[int, int]] = {}   # key -> (offset, size), in stored order
    labels: dict[str, int] = {}
    seen: dict[str, list[str]] = {}           # key -> member names, for messages
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > file_bytes:
                    raise DataError(f"shard {path} is truncated ({member.name} ends at byte "
                                    f"{member.offset_data + member.size} of a {file_bytes}-byte file): copy it "
                                    "again or re-create it with `python -m hvdtrain pack`")
                key, extension = split_member_name(member.name)
                if not key or key.rpartition("/")[2].startswith("."):
                    continue
                seen.setdefault(key, []).append(member.name)
                if extension in IMAGE_EXTENSIONS:
                    if key in images:
                        raise DataError(f"shard {path}: sample '{key}' has more than one image "
                                        f"({', '.join(seen[key])}): keep one image per key")
                    images[key] = (member.offset_data, member.size)
                elif extension == LABEL_EXTENSION:
                    labels[key] = _parse_label(path, tar, member)
    except tarfile.TarError as exc:
        if "end of data" in str(exc):
            raise DataError(f"shard {path} is truncated ({exc}): copy it again or re-create it with "
                            "`python -m hvdtrain pack`") from None
        raise DataError(f"shard {path} is not an uncompressed tar file ({exc}): re-create it with "
                        "`python -m hvdtrain pack` or remove it from data.path") from None
    except OSError as exc:
        raise DataError(f"shard {path} cannot be read ({exc}): check the file and its permissions") from None
    for key, names in seen.items():
        if key not in images or key not in labels:
            missing = "image" if key not in images else ".cls member"
            raise DataError(f"unknown shard layout: shard {path} sample '{key}' ({', '.join(names)}) has no "
                            f"{missing}: {_EXPECTED}")
    keys = list(images)
    return ShardIndex(path, _packed(keys), np.asarray([images[k][0] for k in keys], dtype=np.int64).reshape(-1),
                      np.asarray([images[k][1] for k in keys], dtype=np.int64).reshape(-1),
                      np.asarray([labels[k] for k in keys], dtype=np.int64).reshape(-1))


def _parse_label(path: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
    data = tar.extractfile(member)
    raw = data.read(_MAX_LABEL_BYTES + 1) if data is not None else b""
    text = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _MAX_LABEL_BYTES or not re.fullmatch(r"[0-9]+", text):
        shown = " ".join(text.split())  # one line, whatever the member holds
        shown = shown if len(shown) <= 20 else shown[:20] + "..."
        raise DataError(f"shard {path}: {member.name} holds '{shown}', not an integer class index: write the "
                        "class index (0, 1, ...) in each .cls member and the class names in classes.txt")
    return int(text)


def write_index(index: ShardIndex) -> Path:
    """Writes the index next to its shard (X.tar.idx.json), recording the tar's size to detect changes."""
    target = index_path(index.path)
    document = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "tar_bytes": os.path.getsize(index.path),
                "keys": [k.decode() for k in index.keys], "offsets": index.offsets.tolist(),
                "sizes": index.sizes.tolist(), "labels": index.labels.tolist()}
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(document, separators=(",", ":")))
    os.replace(tmp, target)
    return target


def load_index(path: str) -> ShardIndex | None:
    """The shard's index file, or None when it is missing, unreadable or does not match the tar (then the
    shard is scanned: the tar is what counts)."""
    try:
        document = json.loads(index_path(path).read_text())
        if (not isinstance(document, dict) or document.get("format") != INDEX_FORMAT
                or document.get("version") != INDEX_VERSION):
            return None
        tar_bytes = os.path.getsize(path)
        keys = document["keys"]
        offsets, sizes, labels = (np.asarray(document[name], dtype=np.int64).reshape(-1)
                                  for name in ("offsets", "sizes", "labels"))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None
    if (document.get("tar_bytes") != tar_bytes or not isinstance(keys, list)
            or not all(isinstance(k, str) for k in keys)
            or not len(keys) == len(offsets) == len(sizes) == len(labels)
            or np.any(offsets < 0) or np.any(sizes < 0) or np.any(offsets + sizes > tar_bytes) or np.any(labels < 0)):
        return None
    return ShardIndex(path, _packed(keys), offsets, sizes, labels)


def _packed(keys: list[str]) -> np.ndarray:
    return np.asarray([k.encode() for k in keys] or [b""], dtype=np.bytes_)[:len(keys)]


def open_index(path: str) -> ShardIndex:
    """The shard's index: its index file when valid, else a scan of the tar."""
    return load_index(path) or scan_shard(path)


def shard_epoch_order(counts: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The global order of an epoch over shards of `counts` samples (stored consecutively, shard by shard).

    With shuffle: the shards in a random order, each shard's samples in stored order rotated by a random
    offset, all drawn from default_rng([seed, epoch, ORDER_STREAM]). A permutation of all samples that does
    not depend on the world size, so plan_epoch's guarantees hold; a rank's batch is a run of consecutive
    members of one shard (two at a shard boundary), read sequentially."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not shuffle:
        return np.arange(total)
    rng = np.random.default_rng([seed, epoch, ORDER_STREAM])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    shard_order = rng.permutation(len(counts))
    rotations = rng.integers(0, np.maximum(counts, 1))  # one per shard, in shard order of the files
    pieces = [starts[s] + (np.arange(counts[s]) + rotations[s]) % counts[s] for s in shard_order if counts[s]]
    return np.concatenate(pieces) if pieces else np.arange(0)


class ShardSource:
    """Samples of tar shards, decoded on demand (map-style; see hvdtrain/data/source.py).

    Holds the index arrays only. Reads use os.pread on a handle each thread opens lazily and keeps for the
    last shard it read (batches are runs of one shard); the pickled state has no handle."""

    on_disk = True
    sequential_order = True  # a split of it keeps this order (hvdtrain/data/source.py: SubsetSource)

    def __init__(self, shards: Sequence[ShardIndex], image_shape: tuple[int, int, int], resize: bool) -> None:
        self.paths = [s.path for s in shards]
        counts = np.asarray([len(s.keys) for s in shards], dtype=np.int64)
        self.counts = counts
        self.shard_ids = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
        self.offsets = np.concatenate([s.offsets for s in shards]).astype(np.int64)
        self.sizes = np.concatenate([s.sizes for s in shards]).astype(np.int64)
        self.labels = np.concatenate([s.labels for s in shards]).astype(np.int64)
        # Keys as one fixed-width bytes array: compact, and pickled as a single buffer.
        self.keys = np.concatenate([s.keys for s in shards])
        self.image_shape = image_shape
        self.size = image_shape[:2] if resize else None
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]  # open handles stay in the process that opened them
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def describe(self, index: int) -> str:
        return f"{self.paths[int(self.shard_ids[index])]}:{self.keys[index].decode()}"

    def read_bytes(self, index: int) -> bytes:
        """The image member's bytes of sample `index`; SampleError when the shard cannot be read."""
        shard = int(self.shard_ids[index])
        size = int(self.sizes[index])
        try:
            if getattr(self._local, "shard", None) != shard:
                old = getattr(self._local, "file", None)
                self._local.shard, self._local.file = None, None
                if old is not None:
                    old.close()
                self._local.file = open(self.paths[shard], "rb", buffering=0)
                self._local.shard = shard
            data = os.pread(self._local.file.fileno(), size, int(self.offsets[index]))
        except OSError as exc:
            raise SampleError(self.describe(index), str(exc) or type(exc).__name__) from None
        if len(data) != size:
            raise SampleError(self.describe(index), f"the shard ends {size - len(data)} bytes into the image: "
                              "the shard is truncated; copy it again")
        return data

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for i, index in enumerate(indices):
            what = self.describe(int(index))
            image = decode_image(self.read_bytes(int(index)), self.size, self.image_shape[2], what)
            if image.shape != self.image_shape:
                raise SampleError(what, f"{image.shape[0]}x{image.shape[1]} pixels, but the images are "
                                  f"{self.image_shape[0]}x{self.image_shape[1]}; set data.image_size=[H, W] to "
                                  "resize them all")
            out[i] = image
        return out, self.labels[indices]

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        return shard_epoch_order(self.counts, seed, epoch, shuffle)

    def close(self) -> None:
        """Closes this thread's open shard handle (reads reopen it)."""
        file = getattr(self._local, "file", None)
        self._local.shard, self._local.file = None, None
        if file is not None:
            file.close()


@dataclass(frozen=True)
class ShardLayout:
    """The shard files of data.path: training shards, validation shards (train/ + val/ layout) and the
    classes.txt files that apply."""

    train: list[str]
    val: list[str] | None
    class_files: list[Path]


def expand_braces(pattern: str) -> list[str]:
    """The names of a brace pattern of numeric ranges, '{000..012}' (zero-padded to the first number's width;
    several ranges give every combination, in order)."""
    parts = _RANGE.split(pattern)
    literals, ranges = parts[0::3], list(zip(parts[1::3], parts[2::3], strict=True))
    choices = []
    for first, last in ranges:
        if int(last) < int(first):
            raise DataError(f"data.path={pattern}: the range {{{first}..{last}}} runs backwards: write "
                            "{FIRST..LAST} with FIRST <= LAST")
        choices.append([str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)])
    names = []
    for combination in product(*choices):
        pieces = [literals[0]]
        for value, literal in zip(combination, literals[1:], strict=True):
            pieces += [value, literal]
        names.append("".join(pieces))
    return names


def _tars_in(directory: Path, shown: str) -> list[str]:
    tars = sorted(str(p) for p in directory.glob("*.tar") if p.is_file() and not p.name.startswith("."))
    if not tars:
        raise DataError(f"{shown} has no .tar files: point data.path at a directory of tar shards (make them "
                        "from an image folder with `python -m hvdtrain pack FOLDER OUT_DIR`)")
    return tars


def list_shards(path: str) -> ShardLayout:
    """The shards data.path names (see the module docstring), checked."""
    if _RANGE.search(path):
        names = expand_braces(path)
        missing = [n for n in names if not Path(n).is_file()]
        if len(missing) == len(names):
            raise DataError(f"data.path={path}: the pattern matches no files (e.g. {names[0]} does not exist): "
                            "check the directory, the name and the range")
        if missing:
            raise DataError(f"data.path={path}: {len(missing)} of the {len(names)} shards do not exist (first: "
                            f"{missing[0]}): copy them, or narrow the range")
        return ShardLayout(names, None, [Path(names[0]).parent / CLASSES_FILE])
    root = Path(path)
    if not root.exists():
        raise DataError(f"data.path={path} does not exist: set data.path to a directory of .tar shards (or with "
                        "train/ and val/ directories of them) or a pattern like /data/shard-{000000..000099}.tar")
    if root.is_file():
        if root.suffix != ".tar":
            raise DataError(f"data.path={path} is not a .tar file or a directory: point it at a directory of .tar "
                            "shards")
        return ShardLayout([str(root)], None, [root.parent / CLASSES_FILE])
    val_dir = next((root / v for v in VAL_DIRS if (root / v).is_dir()), None)
    if not (root / "train").is_dir():
        return ShardLayout(_tars_in(root, f"data.path={path}"), None, [root / CLASSES_FILE])
    if val_dir is None:
        raise DataError(f"data.path={path} has train/ but no val/ (or validation/) directory: add one with the "
                        "validation shards, or move the shards up into data.path to split by data.val_fraction")
    return ShardLayout(_tars_in(root / "train", f"data.path={path}/train"),
                       _tars_in(val_dir, f"data.path={path}/{val_dir.name}"),
                       [root / CLASSES_FILE, root / "train" / CLASSES_FILE, val_dir / CLASSES_FILE])


def read_classes(files: list[Path], shown: str) -> tuple[str, ...] | None:
    """The class names of the classes.txt files that exist (they must agree), or None when there are none."""
    found: dict[Path, tuple[str, ...]] = {}
    for file in files:
        if file.is_file():
            try:
                found[file] = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{file} cannot be read ({exc}): write one class name per line") from None
    if not found:
        return None
    (first, names), *others = found.items()
    for file, other in others:
        if other != names:
            only_first = sorted(set(names) - set(other))
            only_other = sorted(set(other) - set(names))
            raise DataError(f"{shown}: {first} and {file} list different classes (only in the first: "
                            f"{', '.join(only_first) or '-'}; only in the second: {', '.join(only_other) or '-'}; "
                            "or a different order): give train/ and val/ the same classes.txt")
    if not names:
        raise DataError(f"{first} lists no classes: write one class name per line, or remove it")
    return names


def _first_bad_label(source: ShardSource, limit: int) -> str:
    """Where the first label >= limit is, for messages."""
    return source.describe(int(np.argmax(source.labels >= limit)))


def _probe(shards: list[ShardIndex]) -> tuple[int, int, str]:
    """(height, width, mode) of the first sample, from its image header."""
    import io

    from PIL import Image, UnidentifiedImageError

    first = next(s for s in shards if len(s.keys))
    what = f"{first.path}:{first.keys[0].decode()}"
    try:
        with open(first.path, "rb") as f:
            f.seek(int(first.offsets[0]))
            data = f.read(int(first.sizes[0]))
        with Image.open(io.BytesIO(data)) as img:
            return img.height, img.width, img.mode
    except UnidentifiedImageError:
        raise SampleError(what, "not a PNG or JPEG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(what, str(exc) or type(exc).__name__) from None


def open_shards(cfg: Any) -> tuple[ShardSource, ShardSource | None, tuple[str, ...]]:
    """data.name=shards: the training source, the validation source (train/ + val/ layout) and class names.

    `cfg` needs .path and .image_size ((H, W) or None). Image size: data.image_size, else the first training
    image's; channels: the first training image's (grey 1, anything else 3)."""
    if not cfg.path:
        raise DataError("data.path is required for data.name=shards: set data.path=/path/to/shards (a directory "
                        "of .tar files or a pattern like /data/shard-{000000..000099}.tar)")
    path = str(cfg.path)
    layout = list_shards(path)
    size: tuple[int, int] | None = (int(cfg.image_size[0]), int(cfg.image_size[1])) if cfg.image_size else None
    splits = {"training": [open_index(p) for p in layout.train]}
    if layout.val is not None:
        splits["validation"] = [open_index(p) for p in layout.val]
    for split, shards in splits.items():
        if not any(len(s.keys) for s in shards):
            raise DataError(f"data.path={path}: the {split} shards hold no samples: {_EXPECTED}")

    height, width, mode = _probe(splits["training"])
    shape = (*(size or (height, width)), channels_of(mode))
    train = ShardSource(splits["training"], shape, resize=size is not None)
    val = ShardSource(splits["validation"], shape, resize=size is not None) if layout.val is not None else None

    names = read_classes(layout.class_files, f"data.path={path}")
    train_max = int(train.labels.max())
    if names is not None:
        for split, source in (("training", train), ("validation", val)):
            if source is not None and int(source.labels.max()) >= len(names):
                raise DataError(f"data.path={path}: {split} sample {_first_bad_label(source, len(names))} has class "
                                f"index {int(source.labels.max())}, but classes.txt lists {len(names)} classes: "
                                "fix the .cls members or classes.txt")
    else:
        if val is not None and int(val.labels.max()) > train_max:
            raise DataError(f"data.path={path}: validation sample {_first_bad_label(val, train_max + 1)} has class "
                            f"index {int(val.labels.max())}, beyond the training shards' classes 0..{train_max}: "
                            "give both splits the same classes (and a classes.txt naming them)")
        names = tuple(str(c) for c in range(train_max + 1))
    return train, val, names

"""`python -m hvdtrain pack FOLDER OUT_DIR`: an image folder as tar shards for data.name=shards (docs/shards.md).

The samples are shuffled across shards (--seed) so that every shard mixes the classes: the shard epoch order
reads runs of consecutive members, so a shard of one class would give batches of one class. Each sample is
KEY.<suffix> (the original file's bytes, not re-encoded) and KEY.cls; each shard gets its index
(X.tar.idx.json) and the output its classes.txt. Everything is written into a hidden directory next to
OUT_DIR that is renamed to OUT_DIR at the end: a failed or interrupted pack leaves no partial output.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvdtrain.data.folder import VAL_FOLDERS, FolderListing, list_folder
from hvdtrain.data.shards import CLASSES_FILE, INDEX_SUFFIX, scan_shard, write_index
from hvdtrain.errors import DataError, UserError

DEFAULT_SHARD_SIZE = 1000
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_STEM = 60
# What a previous pack leaves in OUT_DIR (or in its train/ and val/): --overwrite replaces only such a directory.
_PACK_FILE = re.compile(rf"(shard-\d+\.tar({re.escape(INDEX_SUFFIX)})?|{re.escape(CLASSES_FILE)})")


@dataclass(frozen=True)
class PackSummary:
    """What `pack_folder` wrote."""

    out_dir: Path
    samples: dict[str, int]   # split name ("" for a single split) -> samples
    shards: int
    bytes: int
    seconds: float

    def line(self) -> str:
        """The one-line summary the command prints."""
        total = sum(self.samples.values())
        splits = "" if "" in self.samples else " (" + ", ".join(f"{k} {v}" for k, v in self.samples.items()) + ")"
        return (f"packed {total} samples{splits} into {self.shards} shards, {self.bytes / 1e6:.1f} MB "
                f"({self.bytes} bytes), in {self.seconds:.1f} s: {self.out_dir}")


def sample_key(position: int, width: int, file: str) -> str:
    """A sample's key: its position in the packed order, then the file's stem (no dots, which end a key)."""
    stem = _KEY_CHARS.sub("_", Path(file).stem)[:_MAX_STEM].strip("_")
    return f"{position:0{width}d}_{stem}" if stem else f"{position:0{width}d}"


def write_shards(listing: FolderListing, out: Path, shard_size: int, seed: int) -> tuple[int, int]:
    """Writes listing's samples, shuffled, as out/shard-NNNNNN.tar with their indexes and classes.txt;
    returns (shards, bytes)."""
    order = np.random.default_rng(seed).permutation(len(listing.files))
    width = max(6, len(str(len(order) - 1)))
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    shards = 0
    for shards, first in enumerate(range(0, len(order), shard_size), start=1):
        path = out / f"shard-{shards - 1:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for position in range(first, min(first + shard_size, len(order))):
                sample = int(order[position])
                file = listing.files[sample]
                key = sample_key(position, width, file)
                try:
                    data = Path(file).read_bytes()
                    mtime = int(os.stat(file).st_mtime)
                except OSError as exc:
                    raise DataError(f"cannot read {file} ({exc.strerror or exc}): fix or remove it, then pack "
                                    "again") from None
                _add(tar, f"{key}{Path(file).suffix.lower()}", data, mtime)
                _add(tar, f"{key}.cls", str(int(listing.labels[sample])).encode(), mtime)
        # The index is what a reader's scan of the finished tar finds, so the two cannot disagree.
        index = scan_shard(str(path))
        if len(index.keys) != min(shard_size, len(order) - first):
            raise RuntimeError(f"{path}: wrote {min(shard_size, len(order) - first)} samples, read back "
                               f"{len(index.keys)}")
        write_index(index)
        total += path.stat().st_size
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in listing.classes))
    return shards, total


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def _is_pack_output(directory: Path) -> bool:
    """Whether `directory` holds only what pack writes (shards, indexes, classes.txt, train/ and val/ of them)."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name in ("train", *VAL_FOLDERS):
            if not all(f.is_file() and _PACK_FILE.fullmatch(f.name) for f in entry.iterdir()):
                return False
        elif not (entry.is_file() and _PACK_FILE.fullmatch(entry.name)):
            return False
    return True


def pack_folder(folder: Path, out: Path, shard_size: int = DEFAULT_SHARD_SIZE, seed: int = 0,
                overwrite: bool = False) -> PackSummary:
    """Packs the image folder `folder` (class sub-folders, or train/ and val/ of them) into tar shards in `out`
    (out/train/ and out/val/ for the second layout). Refuses a non-empty `out` unless `overwrite`, and then
    only one that holds a previous pack's output."""
    start = time.perf_counter()
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {shard_size}")
    if not folder.is_dir():
        raise DataError(f"FOLDER {folder} is not a directory: pass an image folder (one sub-folder per class, or "
                        "train/ and val/ folders of them)")
    folder, out = folder.resolve(), out.resolve()
    if out == folder or folder in out.parents:
        raise UserError(f"OUT_DIR {out} is inside FOLDER {folder}: write the shards somewhere else")
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT_DIR {out} is a file: choose a new directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"OUT_DIR {out} is not empty: choose a new directory, or pass --overwrite to replace "
                            "the shards there")
        if not _is_pack_output(out):
            raise UserError(f"OUT_DIR {out} holds files pack did not write: --overwrite replaces only a previous "
                            "pack's output; choose a new directory")
    layout = list_folder(str(folder))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.pack-", dir=out.parent))
    old: Path | None = None
    try:
        samples: dict[str, int] = {}
        if layout.val is None:
            shards, total = write_shards(layout.train, staging, shard_size, seed)
            samples[""] = len(layout.train.files)
        else:
            shards, total = write_shards(layout.train, staging / "train", shard_size, seed)
            val_shards, val_total = write_shards(layout.val, staging / "val", shard_size, seed)
            shards, total = shards + val_shards, total + val_total
            samples.update(train=len(layout.train.files), val=len(layout.val.files))
        staging.chmod(0o755)  # mkdtemp makes it private to the owner
        if out.exists():
            old = out.with_name(f"{staging.name}.old")
            out.rename(old)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return PackSummary(out, samples, shards, total, time.perf_counter() - start)

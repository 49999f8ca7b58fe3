"""`hvdtrain pack`: the command as a real process (summary line; a non-empty OUT_DIR is one error line, exit 2),
and in process: --overwrite, what it refuses, and that a failing pack leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO

import hvdtrain.commands.pack as pack
from hvdtrain.data.shards import open_shards
from hvdtrain.errors import UserError


def make_folder(root: Path, classes: int = 2, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def run_pack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hvdtrain", "pack", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_packs_then_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    folder, out = make_folder(tmp_path / "images"), tmp_path / "shards"
    done = run_pack(str(folder), str(out), "--shard-size", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("packed 8 samples into 3 shards, ") and str(out) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.txt", *[f"shard-{i:06d}.tar{s}" for i in range(3) for s in ("", ".idx.json")]]

    again = run_pack(str(folder), str(out))
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert again.stderr.startswith("hvdtrain: error: OUT_DIR") and "--overwrite" in again.stderr


def test_overwrite_replaces_a_previous_pack_only(tmp_path: Path) -> None:
    folder, out = make_folder(tmp_path / "images"), tmp_path / "shards"
    pack.pack_folder(folder, out, shard_size=2)
    summary = pack.pack_folder(folder, out, shard_size=5, overwrite=True)
    assert summary.shards == 2 and summary.samples == {"": 8}
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert len(open_shards(SimpleNamespace(path=str(out), image_size=None))[0]) == 8
    (out / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="holds files pack did not write"):
        pack.pack_folder(folder, out, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(UserError, match="inside FOLDER"):
        pack.pack_folder(folder, folder / "shards")
    with pytest.raises(UserError, match="--shard-size must be at least 1"):
        pack.pack_folder(folder, tmp_path / "new", shard_size=0)


def test_failed_pack_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, out = make_folder(tmp_path / "images"), tmp_path / "out" / "shards"
    real_add, calls = pack._add, []

    def failing_add(*args: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_add(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pack, "_add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        pack.pack_folder(folder, out, shard_size=2)
    assert list((tmp_path / "out").iterdir()) == []

    # With --overwrite, a failure keeps the previous output as it was.
    monkeypatch.setattr(pack, "_add", real_add)
    pack.pack_folder(folder, out, shard_size=4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(pack, "_add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        pack.pack_folder(folder, out, shard_size=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shards"]

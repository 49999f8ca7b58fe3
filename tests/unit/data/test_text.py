"""data.name: text (hvdtrain/data/text.py): a corpus tokenized on first use into a cache entry named by what decides
its tokens, written once when ranks start together, and {stdlib} in data.path."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from hvdtrain.config import load_config
from hvdtrain.data import load_dataset
from hvdtrain.data.text import cache_entry, corpus_path, text_tokens
from hvdtrain.errors import DataError

LM = ["task=language_model", "model.name=gpt", "data.name=text", "data.block_size=16", "data.val_fraction=0.1"]


def test_stdlib_in_data_path_is_pythons_own_library() -> None:
    assert corpus_path("{stdlib}/json") == Path(sysconfig.get_paths()["stdlib"]) / "json"
    with pytest.raises(DataError, match="data.path=/nowhere does not exist: set data.path to a UTF-8 file"):
        corpus_path("/nowhere")


def test_a_corpus_is_tokenized_once_per_tokenizer_and_read_as_tokens(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    args = [*LM, f"data.path={tmp_path / 'corpus.txt'}", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = load_config(None, args)
    dataset = load_dataset(cfg.data, cfg.seed, cfg.task)
    entry = cache_entry(cfg.data)
    assert dataset.num_classes == len(set("the quick brown fox jumps over the lazy dog\n"))
    written = (entry / "train.bin").stat().st_mtime_ns
    assert text_tokens(cfg.data) == entry and (entry / "train.bin").stat().st_mtime_ns == written  # reused
    x, y = dataset.train.read(np.array([0, 1]))
    assert x.shape == (2, 16) and np.array_equal(x[:, 1:], y[:, :-1])
    byte = load_config(None, [*args, "data.tokenizer=byte"])
    assert cache_entry(byte.data) != entry and load_dataset(byte.data, 0, byte.task).num_classes == 256
    (tmp_path / "corpus.txt").write_text("other text, same name\n" * 40)
    assert cache_entry(cfg.data) != entry  # the file changed: its tokens are made again


@pytest.mark.races
def test_ranks_starting_together_tokenize_once(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    for i in range(20):
        (tmp_path / "corpus" / f"{i:02d}.txt").write_text(f"file {i}: " + "lorem ipsum dolor sit amet " * 200)
    args = [*LM, f"data.path={tmp_path / 'corpus'}", f"data.cache_dir={tmp_path / 'cache'}"]
    script = ("import sys; from hvdtrain.config import load_config; from hvdtrain.data.text import text_tokens; "
              "print(text_tokens(load_config(None, sys.argv[1:]).data))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outputs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(outputs) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [Path(*outputs).name]

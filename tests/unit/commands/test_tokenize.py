"""`python -m hvdtrain tokenize` (hvdtrain/commands/tokenize.py, hvdtrain/text/tokenizer.py): token files that
decode back to the corpus, the validation part at the end of each file, nanoGPT's character ids, a BPE trained
here, and one-line refusals that leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from hvdtrain.commands.tokenize import tokenize_corpus
from hvdtrain.errors import UserError
from hvdtrain.text.tokenizer import load_tokenizer, token_dtype

FIRST = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
SECOND = "Ünïcödé and ascii: naïve café, 東京.\n" * 15


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text(FIRST, encoding="utf-8")
    (folder / "b" / "c.txt").write_text(SECOND, encoding="utf-8")
    (folder / ".hidden").write_text("never read", encoding="utf-8")
    return folder


def read_split(out: Path, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    return np.memmap(out / f"{split}.bin", dtype=meta["dtype"], mode="r")


def expected_parts(fraction: float) -> tuple[str, str]:
    """Each file's text split at len - int(len x fraction) characters, files in sorted order."""
    train, val = "", ""
    for text in (FIRST, SECOND):
        cut = len(text) - int(len(text) * fraction)
        train, val = train + text[:cut], val + text[cut:]
    return train, val


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_the_token_files_decode_to_the_corpus_with_each_files_end_held_out(corpus: Path, tmp_path: Path,
                                                                          kind: str) -> None:
    out = tmp_path / "tokens"
    summary = tokenize_corpus([corpus], out, kind, vocab_size=400 if kind == "bpe" else None, val_fraction=0.2)
    tokenizer = load_tokenizer(out)
    train, val = expected_parts(0.2)
    assert tokenizer.decode(read_split(out, "train").tolist()) == train
    assert tokenizer.decode(read_split(out, "val").tolist()) == val
    meta = json.loads((out / "meta.json").read_text())
    assert meta["files"] == [str(corpus / "a.txt"), str(corpus / "b" / "c.txt")]  # sorted, hidden file left out
    counts = {split: len(read_split(out, split)) for split in ("train", "val")}
    assert meta["tokens"] == summary.tokens == counts
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tokenizer.vocab_size
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the work directory is gone
    if kind == "byte":
        assert meta["vocab_size"] == 256 and summary.tokens["train"] == len(train.encode("utf-8"))
    if kind == "bpe":  # trained here: merges make it shorter than bytes, within the asked vocabulary
        assert 256 < meta["vocab_size"] <= 400 and summary.tokens["train"] < len(train.encode("utf-8")) / 2


def test_char_ids_are_the_sorted_characters_as_nanogpt_prepares_them(corpus: Path, tmp_path: Path) -> None:
    # nanoGPT's shakespeare_char/prepare.py: chars = sorted(set(data)); stoi = {ch: i}; ids = [stoi[c] for c in s].
    out = tmp_path / "tokens"
    tokenize_corpus([corpus / "a.txt", corpus / "b" / "c.txt"], out, "char", val_fraction=0.1)
    chars = sorted(set(FIRST + SECOND))
    stoi = {c: i for i, c in enumerate(chars)}
    train, _ = expected_parts(0.1)
    assert read_split(out, "train").tolist() == [stoi[c] for c in train]
    assert load_tokenizer(out).vocab_size == len(chars)


def test_the_id_type_widens_past_65536_tokens() -> None:
    assert token_dtype(256) == np.uint16 and token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32


@pytest.mark.parametrize(("kind", "vocab_size", "val_fraction", "words"), [
    ("char", 100, 0.1, "--vocab-size applies to --tokenizer bpe"),
    ("word", None, 0.1, "--tokenizer word is not one of byte, char, bpe"),
    ("bpe", 100, 0.1, "--vocab-size 100 is out of range"),
    ("byte", None, 1.5, "--val-fraction 1.5 is out of range"),
])
def test_bad_arguments_are_refused(corpus: Path, tmp_path: Path, kind: str, vocab_size: int | None,
                                   val_fraction: float, words: str) -> None:
    with pytest.raises(UserError, match=words):
        tokenize_corpus([corpus], tmp_path / "out", kind, vocab_size, val_fraction)
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_exit_2_and_nothing_is_written(corpus: Path, tmp_path: Path) -> None:
    """Through the command line: not UTF-8, a missing path, an occupied --out."""
    (corpus / "b" / "binary.txt").write_bytes(b"ok \xff\xfe not text")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep")
    cases = {"is not UTF-8 text (byte 3)": [str(corpus), "--out", str(tmp_path / "o1")],
             "does not exist": [str(tmp_path / "nope"), "--out", str(tmp_path / "o2")],
             "already exists and is not an empty directory": [str(corpus / "a.txt"), "--out", str(taken)]}
    for words, args in cases.items():
        proc = subprocess.run([sys.executable, "-m", "hvdtrain", "tokenize", *args, "--tokenizer", "byte"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr
        assert lines[0].startswith("hvdtrain: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "taken"]  # no output, no work directory
    assert (taken / "x").read_text() == "keep"

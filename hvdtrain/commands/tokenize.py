"""`python -m hvdtrain tokenize TEXT... --out DIR --tokenizer byte|char|bpe`: a text corpus as token files for
language-model training (docs/language-models.md).

Reads UTF-8 files, or every file under a folder (sorted paths; hidden entries and Python's `__pycache__` folders
left out), in order. The validation part is the end of each
file (its last `val_fraction` of characters, as nanoGPT holds out the end of its corpus); each part is tokenized
on its own, so no token straddles the split. Writes, into DIR:

    train.bin, val.bin   the token ids, one after another (uint16 while the vocabulary fits, else uint32): read
                         with numpy.memmap, so a rank's memory does not grow with the corpus
    tokenizer.json       the tokenizer (hvdtrain/text/tokenizer.py)
    meta.json            tokenizer kind, vocab_size, dtype, token counts, the files and val_fraction

Files are read one at a time and their tokens appended to the .bin files, so memory follows the largest file,
not the corpus. Everything is written into a hidden directory next to DIR, renamed to DIR at the end: a failed
or interrupted run leaves no partial output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvdtrain.errors import DataError, UserError
from hvdtrain.text.tokenizer import (
    DEFAULT_BPE_VOCAB,
    KINDS,
    META_FILE,
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    token_dtype,
)

SPLITS = ("train", "val")
DEFAULT_VAL_FRACTION = 0.1


@dataclass(frozen=True)
class TokenizeSummary:
    """What `tokenize_corpus` wrote."""

    out_dir: Path
    kind: str
    vocab_size: int
    tokens: dict[str, int]
    files: int
    seconds: float

    def line(self) -> str:
        """The one-line summary the command prints."""
        return (f"tokenized {self.files} file(s) with {self.kind} (vocabulary {self.vocab_size}): "
                f"{self.tokens['train']} training and {self.tokens['val']} validation tokens in "
                f"{self.seconds:.1f} s: {self.out_dir}")


def corpus_files(inputs: list[Path], out: Path | None = None) -> list[Path]:
    """The files the inputs name: files as given, folders' files (not hidden ones, not in `__pycache__`, nothing
    under `out`) in sorted order."""
    files: list[Path] = []
    skip = out.resolve() if out is not None else None
    for path in inputs:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") or part == "__pycache__"
                                       for part in p.relative_to(path).parts)
                           and (skip is None or skip not in p.resolve().parents))
            if not found:
                raise DataError(f"{path} holds no file: point at text files or folders of them")
            files += found
        else:
            raise DataError(f"{path} does not exist: point at UTF-8 text files or folders of them")
    return files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}): convert it (iconv -t utf-8) or leave it "
                        "out") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The training part and the validation part (the end) of one file's text."""
    cut = len(text) - int(len(text) * val_fraction)
    return text[:cut], text[cut:]


def _texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield read_text(path)


def make_tokenizer(kind: str, files: list[Path], vocab_size: int | None) -> Tokenizer:
    """The tokenizer of `kind`, trained on the files where it needs training."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        chars: set[str] = set()
        for text in _texts(files):
            chars.update(text)
        return CharTokenizer(chars)
    return BpeTokenizer.train(_texts(files), vocab_size or DEFAULT_BPE_VOCAB)


def check_arguments(out: Path, kind: str, vocab_size: int | None, val_fraction: float) -> None:
    if kind not in KINDS:
        raise UserError(f"--tokenizer {kind} is not one of {', '.join(KINDS)}")
    if vocab_size is not None and kind != "bpe":
        raise UserError(f"--vocab-size applies to --tokenizer bpe ({kind}'s vocabulary follows from the text): "
                        "leave it out")
    if vocab_size is not None and not 256 < vocab_size <= 1 << 20:
        raise UserError(f"--vocab-size {vocab_size} is out of range: bpe needs more than 256 (its byte alphabet) "
                        "and at most 1048576")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction} is out of range: use a fraction in [0, 1)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty directory: choose a new one, or delete it")


def tokenize_corpus(inputs: list[Path], out: Path, kind: str, vocab_size: int | None = None,
                    val_fraction: float = DEFAULT_VAL_FRACTION) -> TokenizeSummary:
    """Tokenizes the corpus into `out` (see the module docstring)."""
    start = time.perf_counter()
    check_arguments(out, kind, vocab_size, val_fraction)
    files = corpus_files(inputs, out)
    tokenizer = make_tokenizer(kind, files, vocab_size)
    dtype = token_dtype(tokenizer.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = dict.fromkeys(SPLITS, 0)
        with open(work / "train.bin", "wb") as train, open(work / "val.bin", "wb") as val:
            for path in files:
                for split, part, sink in zip(SPLITS, split_text(read_text(path), val_fraction), (train, val),
                                             strict=True):
                    ids = np.asarray(tokenizer.encode(part), dtype=dtype)
                    ids.tofile(sink)
                    counts[split] += len(ids)
        if counts["train"] < 2:
            raise DataError(f"the corpus gives {counts['train']} training token(s): a language model needs text")
        tokenizer.save(work)
        meta = {"tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
                "tokens": counts, "val_fraction": val_fraction, "files": [str(p) for p in files]}
        (work / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the output is as readable as any new folder
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return TokenizeSummary(out, tokenizer.kind, tokenizer.vocab_size, counts, len(files),
                           time.perf_counter() - start)

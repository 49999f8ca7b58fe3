"""Tokenizers of text corpora: byte (the 256 byte values of UTF-8), char (the corpus' own characters, sorted, as
nanoGPT's character-level data) and bpe (byte-level BPE trained locally on the corpus with the `tokenizers`
library). Each saves to and loads from one `tokenizer.json` in a token directory (docs/language-models.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hvdtrain.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"  # written by `tokenize`, read by data.name: tokens
KINDS = ("byte", "char", "bpe")
DEFAULT_BPE_VOCAB = 8192


class Tokenizer(Protocol):
    """Text to token ids and back."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ByteTokenizer:
    """One token per byte of the UTF-8 encoding: nothing to train, any text."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        (directory / TOKENIZER_FILE).write_text(json.dumps({"kind": self.kind}) + "\n")


class CharTokenizer:
    """One token per character, ids in the order of the sorted characters of the corpus."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as exc:
            raise DataError(f"character {exc.args[0]!r} is not in this char tokenizer's vocabulary (its corpus "
                            "never had it): use text made of the corpus' characters, or --tokenizer byte or bpe")\
                from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        (directory / TOKENIZER_FILE).write_text(json.dumps({"kind": self.kind, "chars": self.chars}) + "\n")


class BpeTokenizer:
    """Byte-level BPE (GPT-2's scheme: any text, no unknown token) of the `tokenizers` library."""

    kind = "bpe"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        inner = HFTokenizer(models.BPE())
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        inner.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        inner.train_from_iterator(texts, trainer=trainer)
        return cls(inner)

    @property
    def vocab_size(self) -> int:
        return int(self.inner.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.inner.decode(list(ids)))

    def save(self, directory: Path) -> None:
        (directory / TOKENIZER_FILE).write_text(json.dumps({"kind": self.kind, "bpe": self.inner.to_str()}) + "\n")


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer saved in `directory` (a `tokenize` output)."""
    path = directory / TOKENIZER_FILE
    try:
        saved = json.loads(path.read_text())
        kind = saved["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path} is missing or unreadable: point at a directory written by "
                        "`python -m hvdtrain tokenize`") from None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(saved["chars"])
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BpeTokenizer(HFTokenizer.from_str(saved["bpe"]))
    raise DataError(f"{path} names an unknown tokenizer {kind!r} (known: {', '.join(KINDS)})")

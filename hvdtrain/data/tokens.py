"""data.name: tokens: a `python -m hvdtrain tokenize` directory read as windows of data.block_size + 1 tokens
(docs/language-models.md).

A window holds a model's input (its first block_size tokens) and its targets (the same shifted by one). Windows
start block_size tokens apart, so consecutive windows share one token and every token after the first is a
target exactly once.
- Training: each epoch cuts the stream at an offset in [0, block_size) drawn from (seed, epoch), then orders
  its windows by a permutation drawn from the same generator. The epoch's order goes through the same sharding
  as images (hvdtrain/data/sharding.py): every window once per epoch, exact mid-epoch resume, elastic
  re-sharding. The window count is the one every offset allows, so it does not change between epochs.
- Validation: every window of the validation part at offset 0, once (exact, not sampled).

A sample's index encodes its window: `offset x windows + k` is the k-th window at that offset, starting at
token `offset + k x block_size`; validation indices are `k` (offset 0). The token files are memory-mapped,
opened lazily in each process (a source pickles as its path and numbers), so a rank's memory does not grow with
the corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.errors import DataError
from hvdtrain.text.tokenizer import META_FILE


class TokenWindows:
    """The windows of one token file (see the module docstring); `offsets`: training's per-epoch offsets."""

    on_disk = False  # memory-mapped reads of a file checked at open: they do not fail mid-epoch

    def __init__(self, path: Path, dtype: str, block_size: int, offsets: bool) -> None:
        self.path, self.dtype, self.block_size, self.offsets = path, np.dtype(dtype), block_size, offsets
        self.num_tokens = path.stat().st_size // self.dtype.itemsize
        # Windows of block_size + 1 tokens starting at offset + k x block_size, for the largest offset used.
        largest_offset = block_size - 1 if offsets else 0
        self.windows = max(0, (self.num_tokens - 1 - largest_offset) // block_size)
        self._tokens: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}  # worker processes map the file themselves

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    def __len__(self) -> int:
        return self.windows

    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._tokens

    def start(self, index: int) -> int:
        """The first token of sample `index`."""
        offset, k = divmod(int(index), self.windows)
        return offset + k * self.block_size

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, block_size) inputs and (n, block_size) targets (the inputs shifted by one), int64."""
        tokens, block = self.tokens(), self.block_size
        windows = np.stack([np.asarray(tokens[s:s + block + 1], dtype=np.int64)
                            for s in (self.start(i) for i in indices)]) if len(indices) else \
            np.zeros((0, block + 1), dtype=np.int64)
        return windows[:, :-1], windows[:, 1:]

    def describe(self, index: int) -> str:
        start = self.start(index)
        return f"{self.path.name}[{start}:{start + self.block_size + 1}]"

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        if not shuffle or not self.offsets:
            return np.arange(self.windows)
        rng = np.random.default_rng([seed, epoch])
        offset = int(rng.integers(self.block_size))
        return offset * self.windows + rng.permutation(self.windows)


def read_meta(directory: Path) -> dict[str, Any]:
    """A token directory's meta.json (written by `tokenize`)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        assert isinstance(meta, dict) and {"vocab_size", "dtype", "tokens"} <= meta.keys()
        return meta
    except (OSError, ValueError, AssertionError):
        raise DataError(f"data.path={directory} is not a token directory (its meta.json is missing or unreadable): "
                        "write one with `python -m hvdtrain tokenize TEXT... --out DIR`") from None


def open_tokens(directory: Path, block_size: int) -> tuple[TokenWindows, TokenWindows, dict[str, Any]]:
    """The training and validation windows of a token directory, and its meta.json."""
    meta = read_meta(directory)
    train, val = (TokenWindows(directory / f"{split}.bin", meta["dtype"], block_size, offsets=split == "train")
                  for split in ("train", "val"))
    for split, source in (("train", train), ("val", val)):
        expected = meta["tokens"][split]
        if source.num_tokens != expected:
            raise DataError(f"{source.path} holds {source.num_tokens} tokens but meta.json says {expected}: the "
                            "directory is damaged or half-copied; tokenize the corpus again")
        if len(source) == 0:
            raise DataError(f"{source.path} holds {source.num_tokens} tokens, not one window of data.block_size + 1 "
                            f"= {block_size + 1} (at every offset): lower data.block_size or add text")
    return train, val, meta

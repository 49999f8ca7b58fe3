"""data.name: tokens (hvdtrain/data/tokens.py): a `tokenize` directory as windows of block_size + 1 tokens. Every
window once per epoch at an offset drawn from (seed, epoch), every validation token predicted once, the same
windows per step at np=2 x B as at np=1 x 2B, memory-mapped reads, and one-line errors."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hvdtrain.commands.tokenize import tokenize_corpus
from hvdtrain.config import load_config
from hvdtrain.data import load_dataset, plan_epoch
from hvdtrain.data.tokens import open_tokens
from hvdtrain.errors import ConfigError, DataError
from hvdtrain.training.setup import build_spec

BLOCK = 8
TEXT = "".join(chr(ord("a") + (i * 7) % 26) + (" " if i % 5 == 0 else "") for i in range(1200))


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    (root / "corpus.txt").write_text(TEXT)
    tokenize_corpus([root / "corpus.txt"], root / "out", "byte", val_fraction=0.1)
    return root / "out"


def all_tokens(token_dir: Path, split: str) -> np.ndarray:
    return np.fromfile(token_dir / f"{split}.bin", dtype=np.uint16).astype(np.int64)


def test_an_epoch_takes_every_window_once_at_its_offset(token_dir: Path) -> None:
    train, _, _ = open_tokens(token_dir, BLOCK)
    tokens = all_tokens(token_dir, "train")
    assert len(train) == (len(tokens) - BLOCK) // BLOCK  # the count every offset allows
    offsets = set()
    for epoch in range(6):
        order = train.epoch_order(seed=3, epoch=epoch, shuffle=True)
        assert np.array_equal(order, train.epoch_order(seed=3, epoch=epoch, shuffle=True))  # deterministic
        x, y = train.read(order)
        assert x.shape == y.shape == (len(train), BLOCK) and x.dtype == np.int64
        starts = sorted(train.start(i) for i in order)
        offset = starts[0]
        offsets.add(offset)
        assert 0 <= offset < BLOCK and starts == [offset + k * BLOCK for k in range(len(train))]
        assert np.array_equal(y[:, :-1], x[:, 1:])  # targets: the inputs shifted by one
        for i, row in zip(order[:5], x[:5], strict=True):
            assert np.array_equal(row, tokens[train.start(i):train.start(i) + BLOCK])
        # Every token from offset + 1 on is a target once.
        targets = Counter(pos for i in order for pos in range(train.start(i) + 1, train.start(i) + BLOCK + 1))
        assert set(targets.values()) == {1} and min(targets) == offset + 1
    assert len(offsets) > 1, "the offset never changed over 6 epochs"


def test_validation_predicts_every_token_once(token_dir: Path) -> None:
    _, val, meta = open_tokens(token_dir, BLOCK)
    tokens = all_tokens(token_dir, "val")
    order = val.epoch_order(seed=3, epoch=0, shuffle=False)
    assert np.array_equal(order, np.arange(len(val))) and len(val) == (len(tokens) - 1) // BLOCK
    x, y = val.read(order)
    assert np.array_equal(np.concatenate(y), tokens[1:len(val) * BLOCK + 1])
    assert np.array_equal(np.concatenate(x), tokens[:len(val) * BLOCK])
    assert meta["tokens"]["val"] == len(tokens)


def test_two_ranks_take_the_windows_one_rank_takes_with_double_batch(token_dir: Path) -> None:
    train, _, _ = open_tokens(token_dir, BLOCK)
    order = train.epoch_order(seed=5, epoch=2, shuffle=True)
    ranks = [plan_epoch(len(train), rank=r, world_size=2, batch_size=4, seed=5, epoch=2, order=order)
             for r in range(2)]
    one = plan_epoch(len(train), rank=0, world_size=1, batch_size=8, seed=5, epoch=2, order=order)
    for step in range(one.steps):
        both = np.concatenate([p.indices[step * 4:(step + 1) * 4] for p in ranks])
        assert np.array_equal(both, one.indices[step * 8:(step + 1) * 8])


def test_sources_pickle_without_their_memory_map(token_dir: Path) -> None:
    train, _, _ = open_tokens(token_dir, BLOCK)
    train.read(np.arange(3))
    copy = pickle.loads(pickle.dumps(train))
    assert copy._tokens is None and np.array_equal(copy.read(np.arange(3))[0], train.read(np.arange(3))[0])
    assert isinstance(train.tokens(), np.memmap)


def test_damaged_or_small_token_directories_are_one_line_errors(token_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a token directory"):
        open_tokens(tmp_path, BLOCK)
    with pytest.raises(DataError, match="lower data.block_size"):
        open_tokens(token_dir, 10_000)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("meta.json", "train.bin", "val.bin", "tokenizer.json"):
        (damaged / name).write_bytes((token_dir / name).read_bytes())
    (damaged / "train.bin").write_bytes((token_dir / "train.bin").read_bytes()[:-20])
    with pytest.raises(DataError, match="tokenize the corpus again"):
        open_tokens(damaged, BLOCK)
    assert json.loads((damaged / "meta.json").read_text())["dtype"] == "uint16"


def test_tokens_train_a_language_model_and_nothing_else(token_dir: Path) -> None:
    lm = ["task=language_model", "model.name=gpt", "data.name=tokens", f"data.path={token_dir}",
          f"data.block_size={BLOCK}"]
    cfg = load_config(None, lm)
    dataset = load_dataset(cfg.data, cfg.seed, cfg.task)
    assert load_config(None, [*lm, "train.eval_every_steps=50"]).train.max_steps_per_epoch == 50
    assert dataset.num_classes == 256 and dataset.image_shape == (BLOCK,)  # byte vocabulary; the context
    refusals = {  # each key combination, and the fix its line names
        ("data.name=tokens", f"data.path={token_dir}"): "set task=language_model",
        ("task=language_model", "model.name=cnn", "data.name=tokens"): "set model.name=gpt",
        ("task=language_model", "model.name=gpt"): "set data.name=tokens",
        ("model.name=gpt",): "set task=language_model",
        (*lm, "model.n_embd=130", "model.n_head=4"): "choose n_embd a multiple of n_head",
        (*lm, "train.eval_every_steps=50", "train.max_steps_per_epoch=20"): "set one of them",
        ("data.vocab_size=300",): "data.vocab_size applies to data.tokenizer=bpe",
    }
    for overrides, fix in refusals.items():
        with pytest.raises(ConfigError, match=fix):
            load_config(None, list(overrides))
    with pytest.raises(ConfigError, match="trains on token windows: leave the augment section at its defaults"):
        build_spec(load_config(None, [*lm, "augment.horizontal_flip=true"]), (BLOCK,), 256)


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_window_once_per_epoch_across_ranks(token_dir: Path, world_size: int) -> None:
    """The ranks' shares of an epoch: no window twice, every window but the last partial global batch (dropped, as
    for images), in the epoch's order; at an odd rank count too."""
    train, _, _ = open_tokens(token_dir, BLOCK)
    order = train.epoch_order(seed=7, epoch=1, shuffle=True)
    plans = [plan_epoch(len(train), rank=r, world_size=world_size, batch_size=3, seed=7, epoch=1, order=order)
             for r in range(world_size)]
    taken = np.concatenate([p.indices for p in plans])
    assert len(set(taken.tolist())) == len(taken) == plans[0].steps * world_size * 3
    assert len(train) - len(taken) < world_size * 3
    assert set(taken.tolist()) == set(order[:len(taken)].tolist())

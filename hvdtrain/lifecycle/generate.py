"""`python -m hvdtrain generate RUN_DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K]
[--num-samples S] [--seed SEED] [--no-cache]`: text from a finished language-model run (docs/language-models.md).

The run's model (either backend) and its own copy of the tokenizer (run_dir/tokenizer.json, copied there when
training started). Sampling happens here, in numpy, from a generator seeded by --seed: the same seed gives the
same text. --temperature 0 is greedy (the highest logit).

The context is what the model sees: the prompt, then every new token, up to the model's block_size positions.
When one more would not fit, the context keeps its last block_size // 2 tokens and goes on from there. With the
key/value cache (the default) the model runs the context once, then one new token per step; --no-cache runs the
whole context for every token (what nanoGPT's sample.py does). Both see the same context at every step, so they
give the same tokens (up to float rounding, which can flip a near tie).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvdtrain.backend import Generation
from hvdtrain.errors import ConfigError, UserError
from hvdtrain.lifecycle.finished_run import open_run
from hvdtrain.lifecycle.trained_model import load_trained_model
from hvdtrain.text.tokenizer import TOKENIZER_FILE, load_tokenizer


@dataclass(frozen=True)
class Sampling:
    """How each next token is drawn."""

    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # only the k highest logits
    seed: int = 0

    def check(self) -> None:
        if self.temperature < 0:
            raise UserError(f"generate: --temperature {self.temperature} is negative: give 0 (greedy) or more")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"generate: --top-k {self.top_k} is below 1: give 1 or more, or leave it out")


def draw(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """One token per row of (n, vocabulary) logits."""
    if sampling.temperature == 0:
        return np.asarray(logits.argmax(axis=1), dtype=np.int64)
    z = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < z.shape[1]:
        kth = np.sort(z, axis=1)[:, -sampling.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    picks = (cumulative < rng.random((len(z), 1))).sum(axis=1)
    return np.asarray(np.minimum(picks, z.shape[1] - 1), dtype=np.int64)


def generate_tokens(model: Generation, prompt: np.ndarray, new_tokens: int, block_size: int, sampling: Sampling,
                    use_cache: bool = True) -> np.ndarray:
    """(n, new_tokens) ids after `prompt` (n, t); the context rule of the module docstring."""
    rng = np.random.default_rng(sampling.seed)
    context = prompt[:, -block_size:]
    cache: Any | None = None
    out = np.zeros((len(prompt), new_tokens), dtype=np.int64)
    for i in range(new_tokens):
        if not use_cache or cache is None:
            logits, cache = model.next_token_logits(context, None)
        else:
            logits, cache = model.next_token_logits(context[:, -1:], cache)
        out[:, i] = draw(logits, sampling, rng)
        context = np.concatenate([context, out[:, i:i + 1]], axis=1)
        if context.shape[1] > block_size:  # the model's positions are used up: keep the last half and go on
            context, cache = context[:, -(block_size // 2):], None
    return out


@dataclass(frozen=True)
class Generated:
    texts: list[str]
    tokens: np.ndarray  # (samples, new tokens)
    seconds: float

    def lines(self) -> list[str]:
        return [part for i, text in enumerate(self.texts) for part in ((["---"] if i else []) + [text])]


def run_generate(run_dir: str, prompt: str, max_new_tokens: int, sampling: Sampling, num_samples: int = 1,
                 use_cache: bool = True) -> Generated:
    """The command: the prompt followed by each sample's new tokens, as text."""
    sampling.check()
    if max_new_tokens < 1 or num_samples < 1:
        raise UserError("generate: --max-new-tokens and --num-samples must be 1 or more")
    run = open_run(run_dir, "generate")
    if run.cfg.task != "language_model":
        raise ConfigError(f"generate: {run.dir} trained task={run.cfg.task}, not a language model: pass the run "
                          "directory of a task=language_model run (or use predict)")
    if not (run.dir / TOKENIZER_FILE).is_file():
        raise UserError(f"generate: {run.dir} holds no {TOKENIZER_FILE} (copied there when training starts): "
                        f"copy it from the run's data.path ({run.cfg.data.path})")
    tokenizer = load_tokenizer(run.dir)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("generate: the prompt is empty: give --prompt with at least one character")
    model = load_trained_model(run)
    if not isinstance(model.backend, Generation) or run.cfg.model.name != "gpt":
        raise ConfigError(f"generate: model.name={run.cfg.model.name} has no key/value cache to generate with: "
                          "generate from a model.name=gpt run")
    start = time.perf_counter()
    prompts = np.tile(np.asarray(ids, dtype=np.int64), (num_samples, 1))
    new = generate_tokens(model.backend, prompts, max_new_tokens, run.image_shape[0], sampling, use_cache)
    seconds = time.perf_counter() - start
    return Generated([prompt + tokenizer.decode(row.tolist()) for row in new], new, seconds)

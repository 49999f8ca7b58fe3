"""generate's sampling and context rule (hvdtrain/lifecycle/generate.py), with a model made of numpy: the cached path
sees exactly the context the uncached one recomputes, across the model's block_size; draws follow the softmax
of logits / T; the seed fixes the tokens. The real models' caches: tests/unit/backends/test_architecture_parity.py;
the command on trained runs: tests/distributed/test_language_models.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hvdtrain.lifecycle.generate import Sampling, draw, generate_tokens

VOCAB, BLOCK = 11, 8


class ContextModel:
    """Logits that depend on every token of the context and its position (as a Transformer's may); its cache is
    the context so far, which it checks it is never asked to run past BLOCK positions."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # tokens run per call

    def next_token_logits(self, tokens: np.ndarray, cache: Any | None) -> tuple[np.ndarray, Any]:
        context = tokens if cache is None else np.concatenate([cache, tokens], axis=1)
        assert context.shape[1] <= BLOCK
        self.calls.append(tokens.shape[1])
        weights = np.arange(1, context.shape[1] + 1) ** 1.5
        mixed = (context * weights).sum(axis=1, keepdims=True)
        return np.sin(mixed * 0.37 + np.arange(VOCAB)) * 3.0, context


def test_cached_and_uncached_generation_see_the_same_context() -> None:
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    for sampling in (Sampling(temperature=0), Sampling(temperature=0.8, top_k=4, seed=3)):
        cached_model, plain_model = ContextModel(), ContextModel()
        cached = generate_tokens(cached_model, prompt, 3 * BLOCK, BLOCK, sampling, use_cache=True)
        plain = generate_tokens(plain_model, prompt, 3 * BLOCK, BLOCK, sampling, use_cache=False)
        assert np.array_equal(cached, plain) and cached.shape == (2, 3 * BLOCK)
        # The cache runs one token per step except the prompt and each restart from the last half of the context.
        assert sum(cached_model.calls) < sum(plain_model.calls) / 2
        assert cached_model.calls.count(BLOCK // 2) >= 2 and cached_model.calls[0] == 3


def test_the_seed_fixes_the_tokens() -> None:
    prompt = np.array([[1, 2]])
    runs = [generate_tokens(ContextModel(), prompt, 30, BLOCK, Sampling(seed=s)) for s in (5, 5, 6)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_draws_follow_the_softmax_of_logits_over_t_and_top_k_keeps_the_k_best() -> None:
    logits = np.tile(np.array([[2.0, 1.0, 0.0, -1.0]]), (40_000, 1))
    rng = np.random.default_rng(0)
    for temperature in (1.0, 0.5):
        counts = np.bincount(draw(logits, Sampling(temperature), rng), minlength=4) / len(logits)
        expected = np.exp(logits[0] / temperature) / np.exp(logits[0] / temperature).sum()
        assert counts == pytest.approx(expected, abs=0.01), (temperature, counts, expected)
    top2 = np.bincount(draw(logits, Sampling(1.0, top_k=2), rng), minlength=4) / len(logits)
    assert top2[2:].sum() == 0 and top2[0] == pytest.approx(np.exp(1) / (np.exp(1) + 1), abs=0.01)
    assert (draw(logits[:3], Sampling(0.0), rng) == 0).all()  # greedy

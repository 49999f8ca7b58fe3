"""model.name: gpt on PyTorch: a decoder-only Transformer in the GPT-2 layout (docs/language-models.md).

Token and position embeddings, `n_layer` pre-LayerNorm blocks (causal self-attention through
`scaled_dot_product_attention`, then a 4x GELU MLP, each added to the residual stream), a final LayerNorm and
an output head that is the token embedding itself (tied). GPT-2's initialisation, drawn in numpy from the seed
(hvdtrain/text/gpt_init.py), so that Keras starts from the same weights. tf_backend/gpt.py builds the same
network (same parameters; `torch_named_variables` gives its variables torch's names).

`forward(tokens)` gives (n, t, vocabulary) logits. `decode(tokens, cache)` is generation's step: it runs only
the new tokens, attending to the keys and values of the earlier ones kept in `cache` (a `KVCache`), and returns
the logits of the last position. One new token, the step generation repeats, takes a lean path (`_step`): the
same weights and operations as the modules, called as functions on keys and values written in place into buffers
of block_size positions. On the recipe's small model a step is mostly Python and dispatch overhead, which this
halves (0.66 -> 0.38 ms a token on a 2-core AMD EPYC); the parity test compares it with the full forward pass.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from hvdtrain.config import ModelConfig
from hvdtrain.text.gpt_init import initial_gpt_weights

Cache = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per block, (n, heads, t, head width)


class KVCache:
    """Generation's keys and values: per block, buffers of the model's block_size positions, `length` filled.

    Made from the context's keys and values; the buffers (and the parameters GPT._step reads) are set up by the
    first step, so that recomputing the whole context for every token (`--no-cache`) pays for none of it."""

    def __init__(self, presents: Cache, block_size: int) -> None:
        self.presents, self.block_size = presents, block_size
        self.length = presents[0][0].shape[2]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.parameters: list[tuple[Any, ...]] = []  # GPT._step's, per block

    def ready(self) -> None:
        if not self.keys:
            n, heads, _, width = self.presents[0][0].shape
            self.keys = [k.new_zeros(n, heads, self.block_size, width) for k, _ in self.presents]
            self.values = [v.new_zeros(n, heads, self.block_size, width) for _, v in self.presents]
            for key, value, (k, v) in zip(self.keys, self.values, self.presents, strict=True):
                key[:, :, :self.length], value[:, :, :self.length] = k, v

    def filled(self) -> Cache:
        if not self.keys:
            return self.presents
        return [(k[:, :, :self.length], v[:, :, :self.length]) for k, v in zip(self.keys, self.values, strict=True)]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n, t, width = x.shape
        q, k, v = (part.view(n, t, self.n_head, width // self.n_head).transpose(1, 2)
                   for part in self.c_attn(x).split(width, dim=2))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # With a cache, t new queries attend to every earlier key and to the new keys up to their own position:
        # causal over the whole sequence. One new token (generation) sees everything: no mask at all.
        if past is None or t == 1:
            mask, causal = None, past is None
        else:
            mask, causal = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t), False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(n, t, width))), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.attn(self.ln_1(x), past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    """The network; `block_size`: the longest context (the position embedding's rows)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    @torch.no_grad()
    def initialise(self, cfg: ModelConfig, seed: int) -> None:
        """GPT-2's initialisation, drawn in numpy from `seed` (hvdtrain/text/gpt_init.py: Keras gets the same)."""
        weights = initial_gpt_weights(cfg, self.wte.num_embeddings, self.block_size, seed)
        named = dict(self.named_parameters())
        assert named.keys() == weights.keys(), sorted(set(named) ^ set(weights))
        for name, value in weights.items():
            named[name].copy_(torch.from_numpy(value))

    def _trunk(self, tokens: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, Cache]:
        start = cache[0][0].shape[2] if cache else 0
        if start + tokens.shape[1] > self.block_size:
            raise ValueError(f"{start + tokens.shape[1]} positions, but the model's context is {self.block_size}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        presents: Cache = []
        for i, block in enumerate(self.h):
            x, present = block(x, cache[i] if cache else None)
            presents.append(present)
        return self.ln_f(x), presents

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, t) int token ids -> (n, t, vocabulary) logits; the head is the token embedding (tied)."""
        x, _ = self._trunk(tokens, None)
        return F.linear(x, self.wte.weight)

    def decode(self, tokens: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """The next-token logits (n, vocabulary) after `tokens` (n, t), which follow the positions in `cache`;
        and the cache with them (the same object, written in place, for one new token)."""
        if cache is not None and tokens.shape[1] == 1 and not self.training:
            if cache.length >= self.block_size:
                raise ValueError(f"{cache.length + 1} positions, but the model's context is {self.block_size}")
            return self._step(tokens, cache), cache
        x, presents = self._trunk(tokens, cache.filled() if cache else None)
        return F.linear(x[:, -1], self.wte.weight), KVCache(presents, self.block_size)

    def _step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`decode` for one new token in eval mode: Block.forward's operations as functions (no dropout: eval)."""
        if not cache.parameters:
            cache.ready()
            cache.parameters = self._step_parameters()
        at, width = cache.length, self.wte.embedding_dim
        x = self.wte(tokens) + self.wpe.weight[at]
        n = x.shape[0]
        for (heads, ln1w, ln1b, qkvw, qkvb, projw, projb, ln2w, ln2b, fcw, fcb, outw, outb), keys, values in zip(
                cache.parameters, cache.keys, cache.values, strict=True):
            qkv = F.linear(F.layer_norm(x, (width,), ln1w, ln1b), qkvw, qkvb)
            qkv = qkv.view(n, 3, heads, 1, width // heads)  # (q, k, v) x heads, one position
            keys[:, :, at:at + 1], values[:, :, at:at + 1] = qkv[:, 1], qkv[:, 2]
            y = F.scaled_dot_product_attention(qkv[:, 0], keys[:, :, :at + 1], values[:, :, :at + 1])
            x = x + F.linear(y.view(n, 1, width), projw, projb)
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (width,), ln2w, ln2b), fcw, fcb)), outw, outb)
        cache.length = at + 1
        return F.linear(F.layer_norm(x[:, -1], (width,), self.ln_f.weight, self.ln_f.bias), self.wte.weight)

    def _step_parameters(self) -> list[tuple[Any, ...]]:
        """Per block, what `_step` reads, looked up once per context (module attribute lookups: 13% of a step)."""
        return [(block.attn.n_head, block.ln_1.weight, block.ln_1.bias, block.attn.c_attn.weight,
                 block.attn.c_attn.bias, block.attn.c_proj.weight, block.attn.c_proj.bias, block.ln_2.weight,
                 block.ln_2.bias, block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight,
                 block.mlp.c_proj.bias) for block in cast(list[Block], list(self.h))]


def build_gpt(cfg: ModelConfig, block_size: int, vocab_size: int, seed: int = 0) -> GPT:
    model = GPT(cfg, vocab_size, block_size)
    model.initialise(cfg, seed)
    return model

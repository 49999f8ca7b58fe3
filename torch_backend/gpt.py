"""model.name: gpt on PyTorch: a decoder-only Transformer in the GPT-2 layout (docs/language-models.md).

Token and position embeddings, `n_layer` pre-LayerNorm blocks (causal self-attention through
`scaled_dot_product_attention`, then a 4x GELU MLP, each added to the residual stream), a final LayerNorm and
an output head that is the token embedding itself (tied). GPT-2's initialisation, drawn in numpy from the seed
(hvdtrain/text/gpt_init.py), so that Keras starts from the same weights. tf_backend/gpt.py builds the same
network (same parameters; `torch_named_variables` gives its variables torch's names).

`forward(tokens)` gives (n, t, vocabulary) logits. `decode(tokens, cache)` is generation's step: it runs only
the new tokens, attending to the keys and values of the earlier ones kept in `cache` (one (k, v) pair per
block), and returns the logits of the last position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvdtrain.config import ModelConfig
from hvdtrain.text.gpt_init import initial_gpt_weights

Cache = list[tuple[torch.Tensor, torch.Tensor]]


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

    def decode(self, tokens: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, Cache]:
        """The next-token logits (n, vocabulary) after `tokens` (n, t), which follow the positions in `cache`;
        and the cache with them."""
        x, presents = self._trunk(tokens, cache)
        return F.linear(x[:, -1], self.wte.weight), presents


def build_gpt(cfg: ModelConfig, block_size: int, vocab_size: int, seed: int = 0) -> GPT:
    model = GPT(cfg, vocab_size, block_size)
    model.initialise(cfg, seed)
    return model

"""model.name: gpt on Keras 3: the network of torch_backend/gpt.py (same layout, parameters, initialisation and
names), for tf_backend's training and the commands after it (docs/language-models.md).

One layer, `GPTNetwork`, holds the whole network inside a functional model whose input is (t,) int token ids
and whose output is (t, vocabulary) logits; `decode` is generation's step with a key/value cache. Attention
goes through `keras.ops.dot_product_attention` (causal); with model.dropout > 0 in training, through the same
formula written out, so that the attention weights can be dropped as torch's kernel does.
`torch_named_variables` lists the variables under torch's state-dict names (tf_backend/portable.py and the
architecture parity test copy weights with it).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from hvdtrain.config import ModelConfig
from hvdtrain.text.gpt_init import initial_gpt_weights

Cache = list[tuple[Any, Any]]


def _normal(std: float) -> keras.initializers.Initializer:
    # The layers' own initialisers; build_gpt then assigns the weights of hvdtrain/text/gpt_init.py.
    return keras.initializers.RandomNormal(mean=0.0, stddev=std)


def gelu(x: Any) -> Any:
    """GELU with the error function (torch's nn.GELU()), written with erf: ONNX has Erf but not Erfc, which
    Keras' exact gelu uses."""
    return 0.5 * x * (1.0 + ops.erf(x / ops.cast(math.sqrt(2.0), x.dtype)))


@keras.saving.register_keras_serializable(package="hvdtrain")
class Block(keras.layers.Layer):
    """One pre-LayerNorm Transformer block: x + attention(ln_1(x)), then + MLP(ln_2(x)); layer names as torch's
    modules (attn_c_attn for attn.c_attn)."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, dropout: float, bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_layer, self.n_head, self.n_embd, self.dropout_rate, self.bias = n_layer, n_head, n_embd, dropout, bias
        residual = _normal(0.02 / math.sqrt(2 * n_layer))

        def dense(units: int, name: str, init: keras.initializers.Initializer | None = None) -> keras.layers.Dense:
            return keras.layers.Dense(units, use_bias=bias, kernel_initializer=init or _normal(0.02),
                                      bias_initializer="zeros", name=name)

        self.ln_1 = keras.layers.LayerNormalization(epsilon=1e-5, center=bias, name="ln_1")
        self.attn_c_attn = dense(3 * n_embd, "attn_c_attn")
        self.attn_c_proj = dense(n_embd, "attn_c_proj", residual)
        self.ln_2 = keras.layers.LayerNormalization(epsilon=1e-5, center=bias, name="ln_2")
        self.mlp_c_fc = dense(4 * n_embd, "mlp_c_fc")
        self.mlp_c_proj = dense(n_embd, "mlp_c_proj", residual)
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape: Any) -> None:
        width = self.n_embd
        for layer in (self.ln_1, self.attn_c_attn, self.attn_c_proj, self.ln_2, self.mlp_c_fc):
            layer.build((None, None, width))
        self.mlp_c_proj.build((None, None, 4 * width))
        super().build(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "dropout": self.dropout_rate, "bias": self.bias}

    def _attention(self, x: Any, past: tuple[Any, Any] | None, training: bool) -> tuple[Any, tuple[Any, Any]]:
        n, t = ops.shape(x)[0], ops.shape(x)[1]
        heads, size = self.n_head, self.n_embd // self.n_head
        q, k, v = (ops.reshape(part, (n, t, heads, size)) for part in ops.split(self.attn_c_attn(x), 3, axis=-1))
        if past is not None:
            k, v = ops.concatenate([past[0], k], axis=1), ops.concatenate([past[1], v], axis=1)
        causal = past is None  # generation's step: one new token, which sees every earlier one
        if training and self.dropout_rate > 0:
            scores = ops.einsum("nqhd,nkhd->nhqk", q, k) / ops.cast(math.sqrt(size), q.dtype)
            if causal:
                allowed = ops.tril(ops.ones((t, t), dtype="bool"))
                scores = ops.where(allowed, scores, ops.cast(-1e9 if scores.dtype == "float32" else -3e4,
                                                             scores.dtype))
            weights = self.drop(ops.softmax(scores, axis=-1), training=True)
            y = ops.einsum("nhqk,nkhd->nqhd", weights, v)
        else:
            y = ops.dot_product_attention(q, k, v, is_causal=causal)
        y = self.attn_c_proj(ops.reshape(y, (n, t, self.n_embd)))
        return self.drop(y, training=training), (k, v)

    def call(self, x: Any, past: tuple[Any, Any] | None = None, training: bool | None = None
             ) -> tuple[Any, tuple[Any, Any]]:
        attended, present = self._attention(self.ln_1(x), past, bool(training))
        x = x + attended
        x = x + self.drop(self.mlp_c_proj(gelu(self.mlp_c_fc(self.ln_2(x)))), training=training)
        return x, present


@keras.saving.register_keras_serializable(package="hvdtrain")
class GPTNetwork(keras.layers.Layer):
    """The GPT of torch_backend/gpt.py as one Keras layer: (n, t) int tokens -> (n, t, vocabulary) logits."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float,
                 bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.n_head, self.n_embd, self.dropout_rate, self.bias = n_head, n_embd, dropout, bias
        self.blocks = [Block(n_layer, n_head, n_embd, dropout, bias, name=f"h_{i}") for i in range(n_layer)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=1e-5, center=bias, name="ln_f")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape: Any) -> None:
        self.wte = self.add_weight(shape=(self.vocab_size, self.n_embd), initializer=_normal(0.02), name="wte")
        self.wpe = self.add_weight(shape=(self.block_size, self.n_embd), initializer=_normal(0.02), name="wpe")
        for block in self.blocks:
            block.build((None, None, self.n_embd))
        self.ln_f.build((None, None, self.n_embd))
        super().build(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocab_size": self.vocab_size, "block_size": self.block_size,
                "n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd, "dropout": self.dropout_rate,
                "bias": self.bias}

    def _trunk(self, tokens: Any, cache: Cache | None, training: bool) -> tuple[Any, Cache]:
        start = ops.shape(cache[0][0])[1] if cache else 0
        positions = ops.arange(start, start + ops.shape(tokens)[1])
        embedded = ops.take(self.wte, tokens, axis=0) + ops.take(self.wpe, positions, axis=0)
        x = self.drop(ops.cast(embedded, self.compute_dtype), training=training)
        presents: Cache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, cache[i] if cache else None, training=training)
            presents.append(present)
        return self.ln_f(x), presents

    def _logits(self, x: Any) -> Any:
        return ops.matmul(x, ops.transpose(ops.cast(self.wte, x.dtype)))  # the head is the token embedding

    def call(self, tokens: Any, training: bool | None = None) -> Any:
        x, _ = self._trunk(tokens, None, bool(training))
        return self._logits(x)

    def decode(self, tokens: Any, cache: Cache | None) -> tuple[Any, Cache]:
        """The next-token logits (n, vocabulary) after `tokens` (n, t): the whole prompt without a cache, then one
        token at a time with it; and the cache with them."""
        x, presents = self._trunk(tokens, cache, False)
        return self._logits(x[:, -1]), presents


def build_gpt(cfg: ModelConfig, block_size: int, vocab_size: int, seed: int = 0) -> keras.Model:
    """The model, its weights torch's initial ones for `seed` (hvdtrain/text/gpt_init.py)."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")  # up to block_size positions
    network = GPTNetwork(vocab_size, block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout, cfg.bias,
                         name="gpt")
    model = keras.Model(tokens, network(tokens), name="gpt")
    weights = initial_gpt_weights(cfg, vocab_size, block_size, seed)
    named = torch_named_variables(model)
    assert named.keys() == weights.keys(), sorted(set(named) ^ set(weights))
    for name, (variable, transposed) in named.items():
        variable.assign(weights[name].T if transposed else weights[name])
    return model


def network(model: keras.Model) -> GPTNetwork:
    """The GPTNetwork layer of a model build_gpt made."""
    return next(layer for layer in model.layers if isinstance(layer, GPTNetwork))


def torch_named_variables(model: keras.Model) -> dict[str, tuple[Any, bool]]:
    """Every variable of a build_gpt model by the name torch_backend/gpt.py's state dict gives it, and whether
    its matrix is the transpose of torch's (Dense kernels are (in, out), torch's Linear weights (out, in))."""
    net = network(model)
    named: dict[str, tuple[Any, bool]] = {"wte.weight": (net.wte, False), "wpe.weight": (net.wpe, False)}

    def add(prefix: str, layer: Any) -> None:
        if isinstance(layer, keras.layers.LayerNormalization):
            named[f"{prefix}.weight"] = (layer.gamma, False)
            if layer.center:
                named[f"{prefix}.bias"] = (layer.beta, False)
        else:
            named[f"{prefix}.weight"] = (layer.kernel, True)
            if layer.use_bias:
                named[f"{prefix}.bias"] = (layer.bias, False)

    for i, block in enumerate(net.blocks):
        for torch_name, layer in (("ln_1", block.ln_1), ("attn.c_attn", block.attn_c_attn),
                                  ("attn.c_proj", block.attn_c_proj), ("ln_2", block.ln_2),
                                  ("mlp.c_fc", block.mlp_c_fc), ("mlp.c_proj", block.mlp_c_proj)):
            add(f"h.{i}.{torch_name}", layer)
    add("ln_f", net.ln_f)
    return named

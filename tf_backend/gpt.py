"""model.name: gpt on Keras 3: the network of torch_backend/gpt.py (same layout, parameters, initialisation and
names), for tf_backend's training and the commands after it (docs/language-models.md).

One layer, `GPTNetwork`, holds the whole network inside a functional model whose input is (t,) int token ids
and whose output is (t, vocabulary) logits; `prefill` and `decode_step` are generation's, with a fixed-size
key/value cache (`generation_functions` compiles the step with XLA). Attention
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

    def _attention(self, x: Any, training: bool) -> tuple[Any, tuple[Any, Any]]:
        n, t = ops.shape(x)[0], ops.shape(x)[1]
        heads, size = self.n_head, self.n_embd // self.n_head
        q, k, v = (ops.reshape(part, (n, t, heads, size)) for part in ops.split(self.attn_c_attn(x), 3, axis=-1))
        if training and self.dropout_rate > 0:
            scores = ops.einsum("nqhd,nkhd->nhqk", q, k) / ops.cast(math.sqrt(size), q.dtype)
            allowed = ops.tril(ops.ones((t, t), dtype="bool"))
            scores = ops.where(allowed, scores, ops.cast(-1e9 if scores.dtype == "float32" else -3e4, scores.dtype))
            weights = self.drop(ops.softmax(scores, axis=-1), training=True)
            y = ops.einsum("nhqk,nkhd->nqhd", weights, v)
        else:
            y = ops.dot_product_attention(q, k, v, is_causal=True)
        y = self.attn_c_proj(ops.reshape(y, (n, t, self.n_embd)))
        return self.drop(y, training=training), (k, v)

    def call(self, x: Any, training: bool | None = None) -> tuple[Any, tuple[Any, Any]]:
        """x (n, t, width) -> the block's output, and the keys and values of the t positions (generation's
        prefill keeps them)."""
        attended, present = self._attention(self.ln_1(x), bool(training))
        x = x + attended
        return self._mlp(x, training), present

    def _mlp(self, x: Any, training: bool | None) -> Any:
        return x + self.drop(self.mlp_c_proj(gelu(self.mlp_c_fc(self.ln_2(x)))), training=training)

    def step(self, x: Any, keys: Any, values: Any, position: Any) -> tuple[Any, Any, Any]:
        """Generation's step with a fixed-size cache: x (n, 1, width) at `position`; keys and values (n, block,
        heads, size) hold the earlier positions. Writes this position's key and value and attends to positions
        up to it. Every shape is fixed, so XLA compiles the step once (tf_backend/backend.py)."""
        n, heads, size = ops.shape(x)[0], self.n_head, self.n_embd // self.n_head
        q, k, v = (ops.reshape(part, (n, 1, heads, size))
                   for part in ops.split(self.attn_c_attn(self.ln_1(x)), 3, axis=-1))
        keys = ops.slice_update(keys, (0, position, 0, 0), k)
        values = ops.slice_update(values, (0, position, 0, 0), v)
        visible = ops.reshape(ops.arange(ops.shape(keys)[1]) <= position, (1, 1, 1, -1))
        y = ops.dot_product_attention(q, keys, values, mask=visible)
        x = x + self.attn_c_proj(ops.reshape(y, (n, 1, self.n_embd)))
        return self._mlp(x, False), keys, values


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

    def _trunk(self, tokens: Any, training: bool) -> tuple[Any, Cache]:
        positions = ops.arange(ops.shape(tokens)[1])
        embedded = ops.take(self.wte, tokens, axis=0) + ops.take(self.wpe, positions, axis=0)
        x = self.drop(ops.cast(embedded, self.compute_dtype), training=training)
        presents: Cache = []
        for block in self.blocks:
            x, present = block(x, training=training)
            presents.append(present)
        return self.ln_f(x), presents

    def _logits(self, x: Any) -> Any:
        return ops.matmul(x, ops.transpose(ops.cast(self.wte, x.dtype)))  # the head is the token embedding

    def call(self, tokens: Any, training: bool | None = None) -> Any:
        x, _ = self._trunk(tokens, bool(training))
        return self._logits(x)

    def prefill(self, tokens: Any) -> tuple[Any, Cache]:
        """Generation's start: the next-token logits (n, vocabulary) after `tokens` (n, t), and each block's keys
        and values (n, t, heads, size) of those positions."""
        x, presents = self._trunk(tokens, False)
        return self._logits(x[:, -1]), presents

    def decode_step(self, tokens: Any, keys: list[Any], values: list[Any], position: Any
                    ) -> tuple[Any, list[Any], list[Any]]:
        """One token (n, 1) at `position` with fixed-size caches (one (n, block, heads, size) pair per block, see
        Block.step): the next-token logits (n, vocabulary) and the caches with this position written."""
        x = ops.take(self.wte, tokens, axis=0) + ops.take(self.wpe, ops.reshape(position, (1,)), axis=0)
        x = ops.cast(x, self.compute_dtype)
        new_keys, new_values = [], []
        for block, k, v in zip(self.blocks, keys, values, strict=True):
            x, k, v = block.step(x, k, v, position)
            new_keys.append(k)
            new_values.append(v)
        return self._logits(self.ln_f(x)[:, -1]), new_keys, new_values


def generation_functions(net: GPTNetwork) -> tuple[Any, Any]:
    """Generation's two TensorFlow functions (tf_backend's next_token_logits, the parity test).

    `prefill(tokens)` runs a context of any length (traced once) and returns the logits after it and every
    block's keys and values padded to block_size positions; `step(token, keys, values, position)` runs one token
    against those fixed-size caches and is compiled by XLA, once (its shapes never change). Without XLA,
    TensorFlow's executor spends more time dispatching the step's hundred small operations than computing them,
    and the cached step would be no faster than recomputing the whole context.
    """
    import tensorflow as tf

    heads, size = net.n_head, net.n_embd // net.n_head
    caches = tuple([tf.TensorSpec([None, net.block_size, heads, size], tf.as_dtype(net.compute_dtype))]
                   * net.n_layer)
    ids = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[ids], autograph=False)
    def prefill(tokens: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        logits, presents = net.prefill(tokens)
        pad = [[0, 0], [0, net.block_size - tf.shape(tokens)[1]], [0, 0], [0, 0]]
        return (tf.cast(logits, tf.float32), tuple(tf.pad(k, pad) for k, _ in presents),
                tuple(tf.pad(v, pad) for _, v in presents))

    @tf.function(input_signature=[ids, caches, caches, tf.TensorSpec([], tf.int32)], autograph=False,
                 jit_compile=True)
    def step(tokens: Any, keys: tuple[Any, ...], values: tuple[Any, ...], position: Any
             ) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        logits, new_keys, new_values = net.decode_step(tokens, list(keys), list(values), position)
        return tf.cast(logits, tf.float32), tuple(new_keys), tuple(new_values)

    return prefill, step


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

"""Training losses on TensorFlow tensors, with the same definitions as torch_backend/losses.py: the built-ins per
sample (docs/tasks.md), the user's by import path, and knowledge distillation."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-sample cross-entropy; with smoothing e the targets are (1 - e) x one-hot + e / classes (torch's)."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    classes = tf.shape(logits)[1]
    targets = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + label_smoothing / tf.cast(classes, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def distillation_loss(student: tf.Tensor, teacher: tf.Tensor, labels: tf.Tensor, temperature: float, alpha: float,
                      label_smoothing: float = 0.0) -> tf.Tensor:
    """alpha x T^2 x KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) x cross-entropy, batch mean."""
    log_t = tf.nn.log_softmax(teacher / temperature, axis=1)
    log_s = tf.nn.log_softmax(student / temperature, axis=1)
    soft = tf.reduce_mean(tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=1))
    hard = tf.reduce_mean(cross_entropy(student, labels, label_smoothing))
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


def token_losses(logits: tf.Tensor, tokens: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """language_model: each position's next-token cross-entropy, (n, t) from (n, t, vocabulary) logits."""
    shape = tf.shape(tokens)
    flat = cross_entropy(tf.reshape(logits, [-1, tf.shape(logits)[-1]]), tf.reshape(tokens, [-1]), label_smoothing)
    return tf.reshape(flat, shape)


def window_summary(logits: tf.Tensor, tokens: tf.Tensor, losses: tf.Tensor | None = None) -> tf.Tensor:
    """language_model's step outputs (hvdtrain/tasks/metrics.py, WINDOW_SUMMARY), as torch_backend/losses.py: per
    window its mean token loss and its share of positions whose highest logit is the next token; (n, 2)."""
    losses = tf.stop_gradient(token_losses(logits, tokens) if losses is None else losses)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), tokens), tf.float32)
    return tf.stack([tf.reduce_mean(losses, axis=1), tf.reduce_mean(correct, axis=1)], axis=1)


def _per_target_mean(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(values, axis=1) if values.shape.rank > 1 else values


def _huber(outputs: tf.Tensor, targets: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    error = tf.abs(outputs - targets)
    return tf.where(error <= delta, 0.5 * tf.square(error), delta * (error - 0.5 * delta))


# Per-sample losses: (outputs, targets) -> (n,), the same definitions as torch_backend/losses.py.
PER_SAMPLE: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "cross_entropy": lambda out, y: cross_entropy(out, y),
    "mse": lambda out, y: _per_target_mean(tf.square(out - y)),
    "mae": lambda out, y: _per_target_mean(tf.abs(out - y)),
    "huber": lambda out, y: _per_target_mean(_huber(out, y)),
    "bce": lambda out, y: _per_target_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=out)),
}


def per_sample_loss(name: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The built-in `name`, or the user's function by import path, checked (when traced) to return one loss per
    sample."""
    if name in PER_SAMPLE:
        return PER_SAMPLE[name]
    from hvdtrain.errors import ConfigError
    from hvdtrain.tasks.task import import_user_loss

    user = import_user_loss(name)

    def checked(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        losses = tf.convert_to_tensor(user(outputs, targets))
        if losses.shape.rank != 1:
            raise ConfigError(f"train.loss={name!r} returned shape {losses.shape.as_list()} for a batch: return one "
                              "loss per sample (shape [batch]), not their mean; the trainer reduces them")
        return losses

    return checked

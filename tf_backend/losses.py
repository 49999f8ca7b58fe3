"""Training losses on TensorFlow tensors: cross-entropy (with label smoothing) and knowledge distillation,
with the same definitions as torch_backend/losses.py."""

from __future__ import annotations

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

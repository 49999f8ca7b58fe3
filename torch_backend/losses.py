"""Training losses on PyTorch tensors: the built-ins per sample (docs/tasks.md), the user's by import path, and
knowledge distillation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha x T^2 x KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) x cross-entropy, batch mean.

    T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et al. 2015).
    """
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """language_model: each position's next-token cross-entropy, (n, t) from (n, t, vocabulary) logits."""
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(tokens.shape)


def window_summary(logits: torch.Tensor, tokens: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
    """language_model's step outputs (hvdtrain/tasks/metrics.py, WINDOW_SUMMARY): per window, its mean token loss
    and its share of positions whose highest logit is the next token; (n, 2) float32, without gradient."""
    with torch.no_grad():
        losses = token_losses(logits, tokens) if losses is None else losses.detach()
        correct = (logits.argmax(dim=-1) == tokens).float()
        return torch.stack([losses.mean(dim=1), correct.mean(dim=1)], dim=1).float()


def _per_target_mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean(dim=1) if values.ndim > 1 else values


# Per-sample losses: (outputs, targets) -> (n,). Regression and multilabel average over their columns.
PER_SAMPLE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": lambda out, y: F.cross_entropy(out, y, reduction="none"),
    "mse": lambda out, y: _per_target_mean(F.mse_loss(out, y, reduction="none")),
    "mae": lambda out, y: _per_target_mean(F.l1_loss(out, y, reduction="none")),
    "huber": lambda out, y: _per_target_mean(F.huber_loss(out, y, reduction="none", delta=1.0)),
    "bce": lambda out, y: _per_target_mean(F.binary_cross_entropy_with_logits(out, y, reduction="none")),
}


def per_sample_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The built-in `name`, or the user's function by import path, checked to return one loss per sample."""
    if name in PER_SAMPLE:
        return PER_SAMPLE[name]
    from hvdtrain.errors import ConfigError
    from hvdtrain.tasks.task import import_user_loss

    user = import_user_loss(name)

    def checked(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = user(outputs, targets)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (len(outputs),):
            shape = list(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ConfigError(f"train.loss={name!r} returned {shape} for a batch of {len(outputs)}: return one "
                              "loss per sample (shape [batch]), not their mean; the trainer reduces them")
        return losses

    return checked

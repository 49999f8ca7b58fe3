"""Training losses on PyTorch tensors: cross-entropy (with label smoothing) and knowledge distillation."""

from __future__ import annotations

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

"""BatchNorm across Horovod ranks for torch models (docs/batchnorm.md).

- `sync_statistics`: every BatchNorm layer's running mean and variance made identical on every rank, averaged
  over ranks or taken from rank 0 (before every evaluation, checkpoint and final save).
- `HorovodSyncBatchNorm` (model.sync_batchnorm): the batch statistics of a training forward pass computed over
  the global batch, from per-rank sums reduced with Horovod's allreduce. The allreduce is differentiable
  (Horovod's autograd function: its gradient is the allreduce of the gradient), so the backward pass is that
  of BatchNorm over the global batch. torch's own SyncBatchNorm needs a torch.distributed process group,
  which a Horovod job does not have.
"""

from __future__ import annotations

import horovod.torch as hvd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class HorovodSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-time statistics cover every rank's batch (any input rank >= 2, channels on
    dim 1). Inference uses the running statistics, as BatchNorm does."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats) and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in fp32 whatever the compute precision, as torch's BatchNorm does
        local = torch.tensor([x.numel() / x.size(1)], dtype=torch.float32, device=x.device)
        total = hvd.allreduce(local, op=hvd.Sum)
        # Two passes (mean, then the centred squares): as accurate as the one-rank BatchNorm.
        mean = hvd.allreduce(xf.sum(dims), op=hvd.Sum) / total
        centred = xf - mean.view(shape)
        var = hvd.allreduce(centred.square().sum(dims), op=hvd.Sum) / total
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_var is not None
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(total)
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        out: torch.Tensor = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def with_sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced by a HorovodSyncBatchNorm holding the same parameters and
    statistics (in place for children; returns the replacement when `module` itself is one)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, HorovodSyncBatchNorm):
        sync = HorovodSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        sync.to(next(iter(module.state_dict().values())).device if module.state_dict() else "cpu")
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        replaced = with_sync_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of the model (BatchNorm1d/2d/3d, SyncBatchNorm, HorovodSyncBatchNorm)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def sync_statistics(model: nn.Module, mode: str) -> int:
    """Makes the running statistics identical on every rank (a collective): "average" over the ranks, or
    "rank0". Returns the number of BatchNorm layers."""
    layers = batchnorm_layers(model)
    for i, layer in enumerate(layers):
        for name in ("running_mean", "running_var"):
            tensor = getattr(layer, name)
            if mode == "average":
                tensor.copy_(hvd.allreduce(tensor, op=hvd.Average, name=f"hvdtrain.bn.{i}.{name}"))
            else:
                hvd.broadcast_(tensor, root_rank=0, name=f"hvdtrain.bn.{i}.{name}")
    return len(layers)

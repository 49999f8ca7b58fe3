"""Where a torch training step spends its time, eager against train.compile: torch.profiler's operator table for the
same model, batch and optimizer, in one process (no Horovod: the step's compute is what the compiler changes).

    python -m benchmarks.compile_profile [--model resnet] [--batch 64] [--steps 20] [--rows 12]

Prints, per mode, the mean step time and the operators with the most self CPU time (Inductor's generated kernels
appear as graph and kernel names). docs/performance.md reads this to say why a compiled step is or is not faster.
"""

from __future__ import annotations

import argparse
import time

import torch

from hvdtrain.config import load_config
from torch_backend.models import build_model


def step_fn(model: torch.nn.Module, call: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
            y: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(call(x), y)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    cfg = load_config(None, [f"model.name={args.model}"])
    torch.manual_seed(0)
    # NHWC batches viewed as NCHW (channels-last memory), as the torch backend feeds them.
    x = torch.rand(args.batch, 32, 32, 3).permute(0, 3, 1, 2)
    y = torch.randint(0, 10, (args.batch,))
    for mode in ("eager", "compiled"):
        model = build_model(cfg.model, (32, 32, 3), 10, seed=0)
        call = torch.compile(model, dynamic=False) if mode == "compiled" else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(3):  # warm-up (and compiling)
            step_fn(model, call, optimizer, x, y)
        start = time.perf_counter()
        for _ in range(args.steps):
            step_fn(model, call, optimizer, x, y)
        per_step = (time.perf_counter() - start) / args.steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step_fn(model, call, optimizer, x, y)
        print(f"== {args.model} {mode}: {per_step * 1000:.1f} ms per step (batch {args.batch}, "
              f"{torch.get_num_threads()} threads)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

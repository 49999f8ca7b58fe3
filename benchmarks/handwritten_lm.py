"""A minimal hand-written PyTorch loop for the language-model benchmark: what a user writes following nanoGPT's
train.py, on the same model (torch_backend/gpt.py, so the networks are identical) and the same token files.

    python -m benchmarks.handwritten_lm --data DIR --json OUT [--block 64 --batch 12 --steps 2000 ...]

Per step: a batch of windows at random offsets of train.bin (nanoGPT's get_batch), forward, cross-entropy,
backward, clip the gradient norm, AdamW at nanoGPT's get_lr (linear warm-up from lr/(W+1), cosine to min_lr),
weight decay on the weights of 2 or more dimensions only. No metrics, logging or checkpoints. At the end, the
validation loss over every non-overlapping window of val.bin (hvdtrain's evaluation). Writes tokens/s (steps
after the first 10) and the losses to OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.step_times import tokens_per_s
from hvdtrain.config import load_config
from torch_backend.gpt import GPT


def get_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (lr - min_lr)


def validation_loss(model: GPT, val: np.ndarray, block: int, batch: int) -> float:
    starts = np.arange(0, len(val) - block, block)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(starts), batch):
            windows = np.stack([val[s:s + block + 1].astype(np.int64) for s in starts[i:i + batch]])
            x, y = torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:])
            logits = model(x)
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    model.train()
    return total / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `hvdtrain tokenize` directory")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("overrides", nargs="*", help="model.* keys, as hvdtrain's (n_layer, n_head, n_embd)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = json.loads((args.data / "meta.json").read_text())
    train, val = (np.memmap(args.data / f"{split}.bin", dtype=meta["dtype"], mode="r") for split in ("train", "val"))
    cfg = load_config(None, ["task=language_model", "data.name=tokens", "model.name=gpt", *args.overrides]).model
    torch.manual_seed(args.seed)
    model = GPT(cfg, int(meta["vocab_size"]), args.block)
    model.initialise(cfg, args.seed)  # GPT-2's initialisation, as nanoGPT's model does (PyTorch's defaults train worse)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(args.seed)
    times, losses = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, args.lr, args.min_lr, args.warmup, args.steps)
        offsets = rng.integers(0, len(train) - args.block - 1, size=args.batch)
        windows = np.stack([train[o:o + args.block + 1].astype(np.int64) for o in offsets])
        x, y = torch.from_numpy(windows[:, :-1]), torch.from_numpy(windows[:, 1:])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    result = {"tokens_per_s": tokens_per_s(times, args.batch * args.block), "steps": args.steps,
              "train_loss_last_100": float(np.mean(losses[-100:])),
              "val_loss": validation_loss(model, val, args.block, 64)}
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

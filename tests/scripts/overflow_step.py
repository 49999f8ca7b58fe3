"""One rank feeds an overflowing batch in fp16; every rank must skip that step alike.

    horovodrun -np 2 python tests/scripts/overflow_step.py {torch|tensorflow} OUT_DIR

Builds the backend's MLP with policy.precision=fp16 and a small loss scale, takes a normal step, then a
step in which rank 0's images are 1e6 (beyond fp16's 65504, so its gradients become inf/NaN), then three
normal steps. Each rank writes OUT_DIR/rank<r>.json with what it saw. tests/scripts/step_probe.py runs the
same steps (`overflow_report`) among its others, in one start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.backend import Backend, get_backend
from hvdtrain.config import load_config
from hvdtrain.training.setup import build_spec


def overflow_report(backend: Backend, name: str) -> dict[str, Any]:
    """The steps above on a backend whose setup() ran; returns what this rank saw."""
    world = backend.comm.world()
    cfg = load_config(None, [f"backend={name}", "model.name=mlp", "model.hidden_units=[16]",
                             "policy.precision=fp16", "policy.loss_scale_init=1024", "optim.momentum=0.9"])
    backend.build(build_spec(cfg, (8, 8, 1), 10))
    rng = np.random.default_rng(world.rank)
    batches = [(rng.random((8, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 8)) for _ in range(5)]

    def finite(weights: dict[str, np.ndarray]) -> bool:
        return all(bool(np.isfinite(w).all()) for w in weights.values())

    backend.train_step([batches[0]], 0.1)
    before, scale_before = backend.weights(), backend.step_info().loss_scale
    x, y = batches[1]
    stats = backend.train_step([(x * 1e6 if world.rank == 0 else x, y)], 0.1)
    after, scale_after = backend.weights(), backend.step_info().loss_scale
    for batch in batches[2:]:
        backend.train_step([batch], 0.1)
    later, scale_later = backend.weights(), backend.step_info().loss_scale
    return {
        "rank": world.rank,
        "overflow_loss_finite": bool(np.isfinite(stats.loss_sum)),
        "scale_before": scale_before, "scale_after": scale_after, "scale_later": scale_later,
        "unchanged_by_overflow": all(np.array_equal(before[k], after[k]) for k in before),
        "changed_later": any(not np.array_equal(after[k], later[k]) for k in after),
        "finite": finite(after) and finite(later),
        "checksum": float(sum(np.sum(w, dtype=np.float64) for w in later.values())),
    }


def main() -> None:
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    backend = get_backend(name)
    backend.setup(1)
    report = overflow_report(backend, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{report['rank']}.json").write_text(json.dumps(report))
    backend.comm.shutdown()


if __name__ == "__main__":
    main()

"""`hvdtrain.train` called again in the same script (each rank's process trains one run after another):
`python tests/scripts/train_twice.py run.dir=ROOT [overrides...]` under a launcher trains ROOT/first and
ROOT/second with the same config, then asks for ROOT/third with another Horovod setting, which is refused (exit 2)."""

from __future__ import annotations

import sys

import hvdtrain
from hvdtrain.errors import UserError

if __name__ == "__main__":
    root = next(a for a in sys.argv[1:] if a.startswith("run.dir=")).split("=", 1)[1]
    overrides = [a for a in sys.argv[1:] if not a.startswith("run.dir=")]
    try:
        for name in ("first", "second"):
            hvdtrain.train("configs/diabetes.yaml", [*overrides, f"run.dir={root}/{name}"])
        hvdtrain.train("configs/diabetes.yaml", [*overrides, "horovod.cycle_time_ms=7", f"run.dir={root}/third"])
    except UserError as exc:  # its one line is already printed on every rank
        sys.exit(exc.exit_code)

"""Real training runs that several tests read, each launched once per session (docs/testing.md).

A run is shared when the properties its readers check do not interfere: profiling, TensorBoard and progress lines
change no number of the training, and a finished run serves as a teacher or a fine-tuning source as well as any
other. Readers never write into a shared run directory (evaluate, which writes eval.json, trains its own runs).
Each runner caches its result in this module, so the tests of every module that asks get the same directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from conftest import SMALL_CONFIG, run_hvdtrain, together, train_many


@dataclass(frozen=True)
class DigitsRun:
    """configs/digits.yaml (12 epochs) at np=2 under horovodrun, with --profile, TensorBoard, steps.jsonl every
    2 steps and progress lines: what the accuracy, profile, TensorBoard, distillation and fine-tuning tests read."""

    dir: Path
    proc: CompletedProcess
    log_every_steps: int = 2


@dataclass(frozen=True)
class BatchingRuns:
    """Five ways to take 5 optimizer steps on a global batch of 32 at LR 0.2 (small config, linear LR scaling):
    `reference` np=1 x 32; `acc4` np=1 x 8 x accumulation 4; `gloo` np=2 x 16 (horovodrun --gloo); `mpi` np=2 x 8
    x accumulation 2 (mpirun, with Horovod's fusion off, cycle time 2 ms, stall check 30 s); and `batch16`, np=1 x
    16: a different global batch, which must give different weights. Both np=2 runs record Horovod's timeline."""

    reference: Path
    acc4: Path
    gloo: Path
    mpi: Path
    batch16: Path
    mpi_proc: CompletedProcess


_DIGITS: dict[str, DigitsRun] = {}
_BATCHING: dict[str, BatchingRuns] = {}


def small_config_file(factory: pytest.TempPathFactory) -> Path:
    path = factory.getbasetemp() / "shared-small.yaml"
    if not path.exists():
        path.write_text(SMALL_CONFIG)
    return path


def digits_run(backend: str, factory: pytest.TempPathFactory) -> DigitsRun:
    if backend not in _DIGITS:
        run_dir = factory.mktemp(f"digits-{backend}") / "run"
        proc = run_hvdtrain(["--config", "configs/digits.yaml", f"backend={backend}", "--profile",
                             "run.log_every_steps=2", "run.progress=lines", f"run.dir={run_dir}"],
                            launcher="horovodrun", np_=2)
        _DIGITS[backend] = DigitsRun(run_dir, proc)
    return _DIGITS[backend]


def batching_runs(backend: str, factory: pytest.TempPathFactory) -> BatchingRuns:
    if backend not in _BATCHING:
        root = factory.mktemp(f"batching-{backend}")
        cfg = ["--config", str(small_config_file(factory)), f"backend={backend}"]
        timeline = "horovod.timeline=timeline.json"
        # The three np=1 runs in one process (conftest.train_many), at the same time as the Gloo job.
        one = [[*cfg, "train.batch_size=32", "optim.lr=0.2", f"run.dir={root / 'reference'}"],
               [*cfg, "train.batch_size=16", "optim.lr=0.2", f"run.dir={root / 'batch16'}"],
               [*cfg, "train.batch_size=8", "policy.accumulation_steps=4", "optim.lr=0.05", f"run.dir={root / 'acc4'}"]]
        together(lambda: train_many(one, root / "np1.json"),
                 lambda: run_hvdtrain([*cfg, "train.batch_size=16", timeline, f"run.dir={root / 'gloo'}"],
                                      launcher="gloo", np_=2))
        mpi_proc = run_hvdtrain([*cfg, "train.batch_size=8", "policy.accumulation_steps=2", "optim.lr=0.05", timeline,
                                 "horovod.fusion_threshold_mb=0", "horovod.cycle_time_ms=2",
                                 "horovod.stall_check_time_s=30", "run.progress=lines", f"run.dir={root / 'mpi'}"],
                                launcher="mpirun", np_=2)
        _BATCHING[backend] = BatchingRuns(root / "reference", root / "acc4", root / "gloo", root / "mpi",
                                          root / "batch16", mpi_proc)
    return _BATCHING[backend]

"""What run.dir must hold before a run trains into it: a checkpoint to resume that fits the config, or no other run.

Only reads files. Rank 0 checks under Horovod (collectives.find_resume, RunOutputs.start); every rank also checks
before it starts its framework (`check_run_dir`, from the CLI), so a refused run stops in a fraction of a second
instead of after the framework's import and Horovod's start.
"""

from __future__ import annotations

from pathlib import Path

from hvdtrain.config import Config
from hvdtrain.errors import CheckpointError
from hvdtrain.reporting.outputs import RunOutputs
from hvdtrain.training.checkpoint import Checkpoint, check_compatible, newest, read_checkpoint
from hvdtrain.training.elastic import elastic_launch


def resume_point(cfg: Config) -> Checkpoint | None:
    """The checkpoint train.resume names (`auto`: run.dir's newest complete one), checked against `cfg`; None to
    start afresh (no resume, or `auto` over a run.dir without checkpoints that holds no run)."""
    resume = cfg.train.resume
    if resume is None:
        return None
    run_dir = cfg.run_dir()
    found = newest(run_dir) if resume == "auto" else read_checkpoint(Path(resume))
    if found is not None:
        check_compatible(found, cfg)
    elif RunOutputs(run_dir, enabled=True).holds_a_run() and not cfg.run.overwrite:
        raise CheckpointError(f"run.dir '{run_dir}' holds a run but no complete checkpoint to resume from: "
                              "set run.overwrite=true to start it over, or another run.dir")
    return found


def check_run_dir(cfg: Config) -> None:
    """Raises the error rank 0 would raise later about run.dir or the checkpoint to resume. Skipped under an
    elastic launch, whose respawned workers join a run that is already under way."""
    if elastic_launch():
        return
    if cfg.train.resume is None:
        RunOutputs(cfg.run_dir(), enabled=True).refuse_if_used(cfg.run.overwrite)
    else:
        resume_point(cfg)

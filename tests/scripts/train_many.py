"""Several training runs one after another in each rank's process: `python tests/scripts/train_many.py RUNS.json`
under a launcher, where RUNS.json lists each run's arguments as `python -m hvdtrain` takes them: optionally
`--config FILE`, then config overrides.

Tests whose runs differ only in config share one start of the framework and of Horovod per rank (a TensorFlow
rank spends about 6 s getting there) instead of paying it per run. Each run is the real `train` (the loop, the
backend, Horovod's collectives, the run directory's files); what a process keeps from one run to the next is what
Horovod's own settings (read once, at hvd.init: horovod.* must be equal across the runs) and the framework hold
globally, reset here where it shows in the outputs: Keras numbers its layers per process, so its session is
cleared before each run (the saved weights' names are then those of a fresh process). A failing run fails the
job with its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from hvdtrain.backend import get_backend
from hvdtrain.config import Config, load_config
from hvdtrain.training.loop import train


def config_of(args: list[str]) -> Config:
    """The config of one run's arguments ([--config FILE] overrides...)."""
    if args[:1] == ["--config"]:
        return load_config(args[1], args[2:])
    return load_config(None, args)


def main() -> None:
    configs = [config_of(args) for args in json.loads(Path(sys.argv[1]).read_text())]
    assert len({cfg.horovod for cfg in configs}) == 1, \
        "runs of one job must share their horovod.* settings (read once, at hvd.init)"
    for cfg in configs:
        if cfg.backend == "tensorflow":
            import keras

            keras.backend.clear_session()
        try:
            train(cfg, get_backend(cfg.backend))
        except BaseException:  # the launcher then stops every rank, instead of the others waiting in a collective
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)


if __name__ == "__main__":
    main()

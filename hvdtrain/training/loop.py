"""The training run, written once for every backend: set up, build, train (elastic or not), finish.

    config -> loop.train -> Engine (engine.py) -> backend (hvdtrain/backend.py protocol) -> reporters
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from hvdtrain.backend import Backend
from hvdtrain.callbacks import CallbackList
from hvdtrain.config import Config
from hvdtrain.data import load_dataset
from hvdtrain.data.pipeline import InputPipeline, resolve_workers
from hvdtrain.distributed.environment import apply_horovod_settings
from hvdtrain.reporting.outputs import rss_mb
from hvdtrain.tracking.tracker import load_user_tracker
from hvdtrain.training import collectives
from hvdtrain.training.elastic import LocalState, elastic_launch, run_elastic
from hvdtrain.training.engine import Engine
from hvdtrain.training.setup import augment_on_device, build_spec
from hvdtrain.training.state import TrainingState

T = TypeVar("T")


def train(cfg: Config, backend: Backend) -> dict[str, Any]:
    """Trains `cfg` on `backend` (Horovod already launched around us) and returns the run summary.

    Under an elastic launch, workers may join at any time and must issue no collective outside Horovod's
    elastic function: what comes before `Engine.run` is then local to each worker.
    """
    wall_start = time.perf_counter()
    horovod_env = apply_horovod_settings(cfg.horovod, cfg.run.profile, running=backend.comm.running())
    placement = backend.setup(cfg.train.threads_per_rank)
    elastic = elastic_launch()
    if not elastic:
        collectives.check_same_config(backend.comm, cfg, backend.comm.world().size)

    def everywhere(action: Any) -> Any:
        return action() if elastic else backend.comm.agree(action)

    rss_start = rss_mb()
    dataset = everywhere(lambda: load_dataset(cfg.data, cfg.seed, cfg.task))
    callbacks = everywhere(lambda: CallbackList.from_config(cfg))
    user_tracker = everywhere(lambda: load_user_tracker(cfg))
    spec = everywhere(lambda: build_spec(cfg, dataset.image_shape, dataset.num_classes,
                                         augment_on_device(cfg.augment, placement),
                                         allreduce=elastic or backend.comm.world().size > 1))
    num_params = backend.build(spec)
    workers = resolve_workers(cfg.data.workers, dataset.train.on_disk, placement.threads,
                              backend.comm.world().local_size)
    with InputPipeline(cfg, dataset, workers) as inputs:
        engine = Engine(cfg, backend, dataset, callbacks, num_params, placement, elastic, inputs, user_tracker)
        engine.rss_start_mb = rss_start
        training = TrainingState()
        summary = run_elastic(engine.run, training, backend) if elastic else engine.run(LocalState(training))
    summary["horovod_settings"] = horovod_env
    summary["wall_time_s"] = time.perf_counter() - wall_start
    engine.finish(summary)
    return summary

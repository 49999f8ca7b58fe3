"""The one training loop, written once for every backend: epochs, steps, evaluation, metrics, outputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain import __version__
from hvdtrain.augment import native
from hvdtrain.augment.pipeline import AugmentPipeline
from hvdtrain.augment.standardize import featurewise_stats
from hvdtrain.backend import Backend, World, get_augment_kernel
from hvdtrain.callbacks import CallbackContext, CallbackList
from hvdtrain.training.checkpoint import Checkpoint, Checkpointer, CheckpointError, check_compatible, newest, read_checkpoint
from hvdtrain.config import Config, config_hash, flatten, to_dict, to_yaml
from hvdtrain.data import BatchLoader, Dataset, load_dataset, plan_epoch, shard_for_eval
from hvdtrain.training.elastic import LocalState, elastic_launch, run_elastic
from hvdtrain.distributed.environment import apply_horovod_settings
from hvdtrain.errors import ConfigError, UserError
from hvdtrain.features.finetune import init_source
from hvdtrain.reporting.outputs import RunOutputs
from hvdtrain.training.policy import ResolvedPolicy, resolve_policy
from hvdtrain.reporting.profile import TIMELINE as PROFILE_TIMELINE
from hvdtrain.reporting.profile import StepProfiler, describe
from hvdtrain.reporting.progress import Progress
from hvdtrain.features.pruning import Pruner, mask_digest, masks_from_zeros, sparsity_report
from hvdtrain.training.schedule import LRSchedule
from hvdtrain.training.state import TrainingState
from hvdtrain.reporting.tensorboard import EventWriter

# metrics.jsonl fields that also go to TensorBoard, as epoch/<name> at the step the epoch ended.
EPOCH_SCALARS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "loss_scale", "samples_per_s",
                 "data_wait_fraction", "world_size")


def train(cfg: Config, backend: Backend) -> dict[str, Any]:
    """Trains `cfg` on `backend` (Horovod already launched around us) and returns the run summary.

    Under an elastic launch, workers may join at any time and must issue no collective outside Horovod's
    elastic function: what comes before `Session.run` is then local to each worker.
    """
    wall_start = time.perf_counter()
    horovod_env = apply_horovod_settings(cfg.horovod, cfg.run.profile)
    world = backend.init(cfg.train.threads_per_rank)
    elastic = elastic_launch()
    if not elastic:
        check_same_config(cfg, backend, world)

    def everywhere(action: Any) -> Any:
        return action() if elastic else _agree(backend, action)

    dataset = everywhere(lambda: load_dataset(cfg.data, cfg.seed))
    callbacks = everywhere(lambda: CallbackList.from_config(cfg))
    num_params = backend.build(cfg, dataset.image_shape, dataset.num_classes)
    session = Session(cfg, backend, dataset, callbacks, num_params, elastic)
    progress = TrainingState()
    summary = run_elastic(session.run, progress, backend) if elastic else session.run(LocalState(progress))
    summary["horovod_settings"] = horovod_env
    summary["wall_time_s"] = time.perf_counter() - wall_start
    session.finish(summary)
    return summary


class Session:
    """One run's loop. `run` is entered once, or under elastic training again after every reset (with the
    state rolled back to the last commit and synced from rank 0), so it rebuilds whatever depends on the
    world: rank, policy (scaled LR), LR schedule, shards."""

    def __init__(self, cfg: Config, backend: Backend, dataset: Dataset, callbacks: CallbackList, num_params: int,
                 elastic: bool) -> None:
        self.cfg, self.backend, self.dataset, self.callbacks = cfg, backend, dataset, callbacks
        self.num_params, self.elastic = num_params, elastic
        self.outputs = RunOutputs(cfg.run_dir(), enabled=False)
        self.progress = Progress(cfg.run.progress, enabled=False)
        self.events = EventWriter(Path(), enabled=False)
        self.profiler: StepProfiler | None = None  # one per run, kept over elastic resets

    def run(self, state: Any) -> dict[str, Any]:
        cfg, backend, p = self.cfg, self.backend, state.progress
        world = backend.world()
        if self.elastic:
            check_same_config(cfg, backend, world)
        policy = resolve_policy(cfg, world, nccl_built=bool(backend.hvd.nccl_built()))
        progress = self.progress = Progress(cfg.run.progress, enabled=world.rank == 0)
        outputs = self.outputs = RunOutputs(cfg.run_dir(), enabled=world.rank == 0)
        checkpointer = Checkpointer(cfg, outputs.dir, enabled=world.rank == 0)
        augment = self._augment_pipeline(world)
        x_val = augment.eval_images(self.dataset.x_val)
        if not p.started:
            self._start(p, world, policy, outputs, checkpointer)
        else:
            outputs.rewind(p.history, p.step)  # an elastic rollback: drop what was logged after the commit
            progress.print(f"elastic reset: {world.size} rank(s) now; continuing epoch {p.epoch + 1} at "
                           f"sample {p.position}, step {p.step}; {policy.describe()}")
        checkpointer.restore_best(p.history)
        timeline = _start_timeline(cfg, backend, outputs)
        if self.profiler is None:
            self.profiler = StepProfiler(outputs.dir, enabled=cfg.run.profile, writes=world.rank == 0)
        # run.profile's own timeline covers the first epoch of the run only: recording it slows the steps.
        self.profiler.timeline_on = timeline is not None
        timeline_ends_after_epoch = p.epoch + 1 if cfg.horovod.timeline is None else None
        self.events.close()  # the writer of the previous entry, after an elastic reset
        self.events = EventWriter(outputs.dir / "tensorboard", enabled=world.rank == 0 and cfg.run.tensorboard)
        ctx = CallbackContext(cfg, world.rank, world.size, outputs.dir)
        self.callbacks.begin(ctx, p.history)
        steps_per_epoch = plan_epoch(len(self.dataset.y_train), rank=world.rank, world_size=world.size,
                                     batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=0,
                                     max_steps=cfg.train.max_steps_per_epoch,
                                     accumulation_steps=cfg.policy.accumulation_steps).steps
        schedule = LRSchedule.from_config(cfg.optim, policy.scaled_lr, cfg.policy.warmup_epochs, steps_per_epoch,
                                          cfg.train.epochs)
        pruner = Pruner(cfg, steps_per_epoch)
        if pruner.active(p.step):  # resumed or rolled back: the masks in force are the weights' zeros
            backend.set_masks(masks_from_zeros(backend.prunable()))
        while p.epoch < cfg.train.epochs and not p.stopped_early:
            record = self._train_epoch(state, world, policy, schedule, steps_per_epoch, augment, checkpointer, ctx,
                                       pruner)
            if timeline is not None and p.epoch + 1 == timeline_ends_after_epoch:
                backend.hvd.stop_timeline()
                self.profiler.timeline_on = False
            record.update(_evaluate(cfg, backend, world, x_val, self.dataset.y_val))
            record["world_size"] = world.size
            asked = self.callbacks.epoch_end(ctx, record)
            p.end_epoch(record)
            p.stopped_early = bool(backend.allreduce_sum(np.array([float(bool(asked))]))[0] > 0)  # any rank: all
            outputs.write_metrics(p.history)
            self.events.scalars(p.step, {f"epoch/{key}": record.get(key) for key in EPOCH_SCALARS})
            self.events.flush()
            progress.end_epoch(record)
            if p.stopped_early:
                who = ", ".join(asked) or "a callback on another rank"
                progress.print(f"stopping after epoch {p.epoch}, asked by {who}")
            if checkpointer.due_at_epoch_end(p.epoch, last=p.epoch == cfg.train.epochs or p.stopped_early):
                checkpointer.save(backend, p)
            state.commit()
        if self.profiler.timeline_on:
            backend.hvd.stop_timeline()
        self.events.close()

        # Every rank reports how many steps it really took: equal counts are what keeps collectives paired.
        steps_per_rank = backend.allgather_object(p.step)
        outputs.save_weights(backend.weights())
        if world.rank == 0:
            backend.save_model(outputs.dir)
        summary = _summary(cfg, backend, world, policy, p.history, steps_per_rank, self.num_params)
        if pruner.enabled:
            kernels = backend.prunable()
            report = sparsity_report(kernels, cfg.prune)
            outputs.write_json("sparsity.json", report)
            summary["sparsity"] = report["sparsity"]
            # Each rank's zero pattern, hashed: identical masks on every rank is what the tests check.
            summary["mask_digest_per_rank"] = backend.allgather_object(mask_digest(masks_from_zeros(kernels)))
        summary["stopped_early"] = p.stopped_early
        summary["elastic"] = self.elastic
        if timeline is not None:
            summary["timeline"] = str(timeline)
        if cfg.run.profile and self.profiler is not None:
            gathered = backend.allgather_object((self.profiler.totals.tolist(), self.profiler.steps))
            summary["profile"] = self.profiler.summary([g[0] for g in gathered], [g[1] for g in gathered])
            outputs.write_json("profile/summary.json", summary["profile"])
            progress.print(describe(summary["profile"], outputs.dir, timeline))
        if augment.stats is not None:
            summary["featurewise_mean"] = augment.stats.mean.tolist()
            summary["featurewise_std"] = augment.stats.std.tolist()
        self.callbacks.train_end(ctx, summary)
        return summary

    def finish(self, summary: dict[str, Any]) -> None:
        """Writes summary.json and the closing line (rank 0)."""
        self.outputs.finish(summary)
        best = summary["best"]
        self.progress.print(f"finished in {summary['wall_time_s']:.1f}s; best {best['metric']} "
                            f"{best[best['metric']]:.4f} at epoch {best['epoch']}; outputs in {self.outputs.dir}")

    def _start(self, p: TrainingState, world: World, policy: ResolvedPolicy, outputs: RunOutputs,
               checkpointer: Checkpointer) -> None:
        """First entry: resume (train.resume), give every rank rank 0's state, create the run's outputs."""
        cfg, backend, dataset = self.cfg, self.backend, self.dataset
        resume = _find_resume(cfg, backend, world)
        skipped: list[str] = []
        if resume is not None:
            if world.rank == 0:
                backend.load_checkpoint(resume.path)
            p.assign(resume.state)
        elif cfg.train.init_from:  # fine-tuning: weights only, read by rank 0
            skipped = _agree(backend, lambda: backend.init_weights(init_source(cfg), cfg.train.init_skip_mismatched)
                             if world.rank == 0 else [])
        if cfg.distill.teacher:
            _agree(backend, lambda: backend.load_teacher(init_source(cfg, cfg.distill.teacher, "distill.teacher"))
                   if world.rank == 0 else None)
        backend.sync_state()
        _agree(backend, lambda: outputs.start(to_yaml(cfg), history=p.history if resume else None,
                                              resume_step=p.step, overwrite=cfg.run.overwrite))
        checkpointer.remove_leftovers()
        p.started = True
        progress = self.progress
        progress.print(f"hvdtrain {__version__}: backend {backend.name} ({backend.framework_version()}), "
                       f"{world.size} rank(s) via {world.controller}{' (elastic)' if self.elastic else ''}, "
                       f"device {world.device}, {world.threads} thread(s)/rank; {cfg.model.name} with "
                       f"{self.num_params:,} parameters; {cfg.data.name}: {len(dataset.y_train)} train / "
                       f"{len(dataset.y_val)} val samples")
        progress.print("resolved config:\n  " + to_yaml(cfg).rstrip().replace("\n", "\n  "))
        progress.print(policy.describe())
        if resume is not None:
            progress.print(f"resuming from {resume.path} (epoch {p.epoch}, sample {p.position}, step {p.step})")
        elif cfg.train.init_from:
            progress.print(f"weights from {cfg.train.init_from}" + (f"; freshly initialised: {', '.join(skipped)}"
                                                                    if skipped else ""))

    def _augment_pipeline(self, world: World) -> AugmentPipeline:
        aug, backend = self.cfg.augment, self.backend
        stats = None
        if aug.featurewise_center or aug.featurewise_std_normalization:
            stats = featurewise_stats(self.dataset.x_train, world.rank, world.size, aug.rescale,
                                      backend.allreduce_sum)
        native.prepare(aug)
        return AugmentPipeline(aug, get_augment_kernel(self.cfg.backend) if aug.random else None, stats)

    def _train_epoch(self, state: Any, world: World, policy: ResolvedPolicy, schedule: LRSchedule,
                     steps_per_epoch: int, augment: AugmentPipeline, checkpointer: Checkpointer,
                     ctx: CallbackContext, pruner: Pruner) -> dict[str, Any]:
        """The rest of the current epoch from `progress.position`: optimizer steps, each over a window of
        `policy.accumulation_steps` micro-batches; checkpoints and elastic commits on their steps."""
        cfg, backend, dataset, p = self.cfg, self.backend, self.dataset, state.progress
        batch, window_size = cfg.train.batch_size, cfg.policy.accumulation_steps
        plan = plan_epoch(len(dataset.y_train), rank=world.rank, world_size=world.size, batch_size=batch,
                          seed=cfg.seed, epoch=p.epoch, max_steps=cfg.train.max_steps_per_epoch,
                          accumulation_steps=window_size, start=p.position)
        transform = augment.train_transform(cfg.seed, world.rank, p.epoch, p.position // (world.size * batch))
        local = np.zeros(3)  # this rank's sums since they were last folded into p.sums (a global total)

        def fold() -> None:  # a collective: called at the same step on every rank
            nonlocal local
            p.sums = [float(v) for v in np.add(p.sums, backend.allreduce_sum(local))]
            local = np.zeros(3)

        log_every = cfg.run.log_every_steps
        self.progress.start_epoch(p.epoch, cfg.train.epochs, plan.steps)
        self.callbacks.epoch_begin(ctx, p.epoch + 1)
        start, time_before, wait_before = time.perf_counter(), p.epoch_time, p.data_wait
        lr = schedule.at(p.epoch * steps_per_epoch + p.position // policy.global_batch)
        window: list[tuple[np.ndarray, np.ndarray]] = []
        taken = 0
        profiler, step_end, wait_seen = self.profiler, time.perf_counter(), 0.0
        assert profiler is not None
        with BatchLoader(dataset.x_train, dataset.y_train, plan.indices, batch,
                         prefetch=cfg.data.prefetch_batches, transform=transform) as loader:
            for item in loader:
                window.append(item)
                if len(window) < window_size:
                    continue
                lr = schedule.at(p.epoch * steps_per_epoch + p.position // policy.global_batch)
                step_start = time.perf_counter()
                stats = backend.train_step(window, lr)
                backend_seconds = time.perf_counter() - step_start
                window = []
                taken += 1
                p.step += 1
                p.position += policy.global_batch
                local += stats.as_array()
                sparsity = pruner.sparsity_due(p.step)
                if sparsity is not None:  # rank 0's masks for everyone
                    masks = pruner.masks(backend.prunable(), sparsity) if world.rank == 0 else None
                    backend.set_masks(backend.allgather_object(masks)[0])
                p.epoch_time = time_before + time.perf_counter() - start
                p.data_wait = wait_before + loader.wait_seconds
                loss = stats.loss_sum / stats.count
                if log_every and p.step % log_every == 0:
                    values = {"loss": loss, "lr": backend.current_lr(), "loss_scale": backend.loss_scale()}
                    self.outputs.log_step({"step": p.step, "epoch": p.epoch + 1, **values})
                    self.events.scalars(p.step, {f"step/{key}": value for key, value in values.items()})
                self.progress.update(taken, loss, taken * policy.global_batch / (time.perf_counter() - start))
                self.callbacks.step_end(ctx, p.step, loss)
                last = taken == plan.steps  # the epoch end follows: its own checkpoint and commit
                if not last and checkpointer.due_at_step(p.step):
                    fold()
                    checkpointer.save(backend, p)
                if self.elastic and not last and p.step % cfg.elastic.commit_every_steps == 0:
                    fold()
                    state.commit()
                now = time.perf_counter()
                profiler.record(p.epoch + 1, p.step, loader.wait_seconds - wait_seen, backend_seconds,
                                backend.last_comm_seconds, now - step_end)
                step_end, wait_seen = now, loader.wait_seconds
        profiler.flush()
        fold()
        loss_sum, correct, count = p.sums
        return {
            "epoch": p.epoch + 1,
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "lr": lr,
            "loss_scale": backend.loss_scale(),
            "epoch_time_s": p.epoch_time,
            "samples_per_s": count / p.epoch_time,
            "data_wait_fraction": p.data_wait / p.epoch_time,
        }


def _find_resume(cfg: Config, backend: Backend, world: World) -> Checkpoint | None:
    """The checkpoint to continue from (train.resume), as rank 0 finds it; every rank gets its manifest,
    so all ranks start from the same epoch and step (rank 0 alone reads the state files)."""
    if cfg.train.resume is None:
        return None

    def locate() -> Checkpoint | None:
        if world.rank != 0:
            return None
        run_dir = cfg.run_dir()
        found = newest(run_dir) if cfg.train.resume == "auto" else read_checkpoint(Path(cfg.train.resume))
        if found is not None:
            check_compatible(found, cfg)
        elif RunOutputs(run_dir, enabled=True).holds_a_run() and not cfg.run.overwrite:
            raise CheckpointError(f"run.dir '{run_dir}' holds a run but no complete checkpoint to resume from: "
                                  "set run.overwrite=true to start it over, or another run.dir")
        return found

    found = _agree(backend, locate)
    shared = backend.allgather_object(None if found is None else (str(found.path), found.manifest))[0]
    return None if shared is None else Checkpoint(Path(shared[0]), shared[1])


def _start_timeline(cfg: Config, backend: Backend, outputs: RunOutputs) -> Path | None:
    """Starts Horovod's timeline (horovod.timeline, or profile/timeline.json with run.profile) once the run
    directory exists; rank 0 writes it."""
    name = cfg.horovod.timeline or (PROFILE_TIMELINE if cfg.run.profile else None)
    if name is None:
        return None
    path = outputs.dir / name
    if outputs.enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
    backend.hvd.start_timeline(str(path.resolve()), mark_cycles=cfg.horovod.timeline_mark_cycles)
    return path


def _evaluate(cfg: Config, backend: Backend, world: World, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
    """Every validation sample exactly once across ranks; one allreduce of the sums at the end."""
    start = time.perf_counter()
    idx = shard_for_eval(len(y_val), world.rank, world.size)
    sums = np.zeros(3)
    for lo in range(0, len(idx), cfg.train.eval_batch_size):
        batch = idx[lo:lo + cfg.train.eval_batch_size]
        sums += backend.eval_step(x_val[batch], y_val[batch]).as_array()
    loss_sum, correct, count = backend.allreduce_sum(sums)
    if count == 0:
        return {"val_loss": None, "val_accuracy": None, "eval_time_s": time.perf_counter() - start}
    return {"val_loss": loss_sum / count, "val_accuracy": correct / count,
            "eval_time_s": time.perf_counter() - start}


def _summary(cfg: Config, backend: Backend, world: World, policy: ResolvedPolicy, history: list[dict[str, Any]],
             steps_per_rank: list[int], num_params: int) -> dict[str, Any]:
    metric = "val_accuracy" if history[-1]["val_accuracy"] is not None else "train_accuracy"
    best = max(history, key=lambda r: r[metric])
    return {
        "backend": backend.name,
        "framework_version": backend.framework_version(),
        "hvdtrain_version": __version__,
        "world_size": world.size,
        "controller": world.controller,
        "device": world.device,
        "threads_per_rank": world.threads,
        "model": cfg.model.name,
        "num_parameters": num_params,
        "dataset": cfg.data.name,
        "epochs": len(history),
        "steps": steps_per_rank[0],
        "steps_per_rank": steps_per_rank,
        "global_batch_size": policy.global_batch,
        "accumulation_steps": policy.accumulation_steps,
        "base_lr": policy.base_lr,
        "scaled_lr": policy.scaled_lr,
        "precision": policy.precision,
        "compression": policy.compression,
        "reduce_op": policy.reduce_op,
        "final": history[-1],
        "best": {"metric": metric, **best},
        "mean_samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
        "config_hash": config_hash(cfg),
    }


def check_same_config(cfg: Config, backend: Backend, world: World) -> None:
    """Stops every rank, naming the differing keys, if any rank resolved a different config."""
    if world.size == 1:
        return
    mine = flatten(to_dict(cfg))
    everyone = backend.allgather_object(mine)
    diffs = []
    for rank, theirs in enumerate(everyone):
        for key in sorted(set(mine) | set(theirs)):
            if theirs.get(key) != everyone[0].get(key):
                diffs.append(f"rank {rank} has {key}={theirs.get(key)!r} where rank 0 has "
                             f"{everyone[0].get(key)!r}")
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(f"ranks resolved different configs ({shown}): give every rank the same "
                          "--config file and overrides")


def _agree(backend: Backend, action: Any) -> Any:
    """Runs `action` on every rank; if it fails with a UserError on any rank, every rank raises it.

    Without this, a rank that cannot read its data would exit while the others wait in a collective.
    """
    error: UserError | None = None
    result = None
    try:
        result = action()
    except UserError as exc:
        error = exc
    messages = backend.allgather_object(str(error) if error else None)
    failed = [(rank, msg) for rank, msg in enumerate(messages) if msg is not None]
    if failed:
        rank, msg = failed[0]
        if error is not None:
            raise error
        raise UserError(f"{msg} (reported by rank {rank})")
    return result

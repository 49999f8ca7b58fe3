"""The epoch and step engine: optimizer steps over windows of micro-batches, evaluation, checkpoints, the
stop vote, and the run's summary. Reporting happens in callbacks (hvdtrain/reporting/reporters.py); the
collectives every rank makes together are in hvdtrain/training/collectives.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain import __version__
from hvdtrain.augment import native
from hvdtrain.augment.pipeline import AugmentPipeline, pixels
from hvdtrain.augment.standardize import FeatureStats, featurewise_stats
from hvdtrain.backend import Backend, BatchNormStatistics, Placement, require_prunable
from hvdtrain.callbacks import Callback, CallbackContext, CallbackList, StepReport
from hvdtrain.config import Config, config_hash, to_yaml
from hvdtrain.data import BatchLoader, Dataset, plan_epoch
from hvdtrain.data.pipeline import InputPipeline
from hvdtrain.data.text import token_directory
from hvdtrain.distributed.communicator import World
from hvdtrain.features.pruning import mask_digest, masks_from_zeros
from hvdtrain.reporting.outputs import RunOutputs, peak_rss_mb
from hvdtrain.reporting.profile import TIMELINE as PROFILE_TIMELINE
from hvdtrain.reporting.profile import StepProfiler
from hvdtrain.reporting.progress import Progress
from hvdtrain.reporting.reporters import MetricsLog, ProfileReport, ProgressReport, SparsityReport, TensorBoardLog
from hvdtrain.reporting.tensorboard import EventWriter
from hvdtrain.tasks import sums as named
from hvdtrain.tasks.metrics import Sums
from hvdtrain.tasks.task import COUNT
from hvdtrain.text.tokenizer import TOKENIZER_FILE
from hvdtrain.tracking.tracker import Tracker, TrackerFactory, rank0_trackers
from hvdtrain.training import collectives
from hvdtrain.training.checkpoint import Checkpointer
from hvdtrain.training.setup import RunPlan, augment_on_device, plan_run
from hvdtrain.training.state import TrainingState
from hvdtrain.training.weight_sources import init_source


class Engine:
    """One run's loop. `run` is entered once, or under elastic training again after every reset (with the
    state rolled back to the last commit and synced from rank 0), so it rebuilds whatever depends on the
    world: rank, policy (scaled LR), LR schedule, shards, reporters."""

    def __init__(self, cfg: Config, backend: Backend, dataset: Dataset, callbacks: CallbackList, num_params: int,
                 placement: Placement, elastic: bool, inputs: InputPipeline,
                 user_tracker: TrackerFactory | None = None) -> None:
        self.cfg, self.backend, self.dataset, self.callbacks = cfg, backend, dataset, callbacks
        self.inputs = inputs
        self.rss_start_mb = 0.0  # set by the loop before the dataset is opened
        self.num_params, self.placement, self.elastic = num_params, placement, elastic
        self.comm = backend.comm
        self.outputs = RunOutputs(cfg.run_dir(), enabled=False)
        self.progress = ProgressReport(Progress(cfg.run.progress, enabled=False))
        self.profiler: StepProfiler | None = None  # one per run, kept over elastic resets
        self.events: EventWriter | None = None
        self.user_tracker = user_tracker  # tracking.user's factory, imported on every rank, called on rank 0
        self.tracking: list[Tracker] | None = None  # rank 0's trackers (hvdtrain/tracking/), kept over elastic resets
        self._stats: FeatureStats | None = None  # featurewise statistics over all ranks
        self.task = cfg.task_spec()
        self.width = len(dataset.class_names)  # the model's output width: classes, targets or labels
        self._graphs_seen = 0  # train.compile: graphs compiled before the current epoch
        self._notes_said: set[str] = set()

    def run(self, state: Any) -> dict[str, Any]:
        """Trains from `state.training` to the end; `state.commit()` marks elastic commit points."""
        cfg, backend, comm, run_state = self.cfg, self.backend, self.comm, state.training
        world = comm.world()
        if self.elastic:
            collectives.check_same_config(comm, cfg, world.size)
        plan = plan_run(cfg, world, len(self.dataset.train), comm.nccl_built())
        self.progress = ProgressReport(Progress(cfg.run.progress, enabled=world.rank == 0), self.task.metric_names())
        outputs = self.outputs = RunOutputs(cfg.run_dir(), enabled=world.rank == 0)
        checkpointer = Checkpointer(cfg, outputs.dir, enabled=world.rank == 0)
        augment = self._augment_pipeline(world)
        if not run_state.started:
            self._start(run_state, plan, outputs, checkpointer)
            # The first commit: a rollback before the next one must not undo the start (a second start would
            # find its own run directory and refuse it). Every rank of an elastic job is here together.
            state.commit()
        else:
            # An elastic rollback: drop what was logged after the commit.
            outputs.rewind(run_state.history, run_state.step)
            self.progress.print(f"elastic reset: {world.size} rank(s) now; continuing epoch {run_state.epoch + 1} at "
                                f"sample {run_state.position}, step {run_state.step}; {plan.policy.describe()}")
        checkpointer.restore_best(run_state.history)
        timeline = self._start_timeline(outputs)
        if self.profiler is None:
            self.profiler = StepProfiler(outputs.dir, enabled=cfg.run.profile, writes=world.rank == 0)
        # run.profile's own timeline covers the first epoch of the run only: recording it slows the steps.
        self.profiler.timeline_on = timeline is not None
        timeline_ends_after_epoch = run_state.epoch + 1 if cfg.horovod.timeline is None else None
        ctx = CallbackContext(cfg, world.rank, world.size, outputs.dir, plan.epochs)
        self.callbacks.begin(ctx, run_state.history, self._reporters(run_state, world, plan))
        if plan.pruner.active(run_state.step):  # resumed or rolled back: the masks in force are the weights' zeros
            prunable = require_prunable(backend)
            prunable.set_masks(masks_from_zeros(prunable.prunable()))
        while run_state.epoch < plan.epochs and not run_state.stopped_early:
            record = self._train_epoch(state, plan, augment, checkpointer, ctx)
            if timeline is not None and run_state.epoch + 1 == timeline_ends_after_epoch:
                comm.stop_timeline()
                self.profiler.timeline_on = False
            start = time.perf_counter()
            self._consistent_batchnorm()  # the model evaluated is the one every rank holds, and saves
            with self.inputs.eval_loader(world.rank, world.size, augment.eval_transform()) as batches:
                totals, skipped = collectives.evaluate(comm, backend, batches, lambda: len(batches.skipped),
                                                       self.task, self.width)
            record.update({f"val_{name}": value for name, value in self.task.values(totals).items()})
            record.update({"eval_time_s": time.perf_counter() - start, "world_size": world.size,
                           "step": run_state.step})  # optimizer steps at the epoch's end (trackers' x axis)
            record.update(self._compile_report())
            if self.inputs.checks_reads:
                record["skipped_samples"] += skipped
            run_state.end_epoch(record)
            asked = self.callbacks.epoch_end(ctx, record)
            run_state.stopped_early = collectives.any_rank(comm, bool(asked))  # any rank asks: all stop
            if run_state.stopped_early:
                self.progress.print(f"stopping after epoch {run_state.epoch}, asked by "
                                    f"{', '.join(asked) or 'a callback on another rank'}")
            if checkpointer.due_at_epoch_end(run_state.epoch,
                                             last=run_state.epoch == plan.epochs or run_state.stopped_early):
                checkpointer.save(backend, run_state)  # statistics made consistent by the evaluation above
            state.commit()
        if self.profiler.timeline_on:
            comm.stop_timeline()
        return self._finish_run(run_state, plan, timeline, ctx)

    def _finish_run(self, run_state: TrainingState, plan: RunPlan, timeline: Path | None,
                    ctx: CallbackContext) -> dict[str, Any]:
        """The run's last collectives, final weights and summary."""
        cfg, backend, comm, outputs, world = self.cfg, self.backend, self.comm, self.outputs, plan.world
        # Every rank reports how many steps it really took: equal counts are what keeps collectives paired.
        steps_per_rank = collectives.gather(comm, run_state.step)
        self._consistent_batchnorm()
        outputs.save_weights(backend.weights())
        if world.rank == 0:
            backend.save(outputs.dir, "model")
        summary = self._summary(world, plan, run_state.history, steps_per_rank)
        if plan.pruner.enabled:
            # Each rank's zero pattern, hashed: identical masks on every rank is what the tests check.
            kernels = require_prunable(backend).prunable()
            summary["mask_digest_per_rank"] = collectives.gather(comm, mask_digest(masks_from_zeros(kernels)))
        # Each rank's resident memory (MB) when the run began (before the dataset was opened) and at its peak.
        summary["memory_mb_per_rank"] = collectives.gather(comm, {"start": self.rss_start_mb, "peak": peak_rss_mb()})
        summary["stopped_early"] = run_state.stopped_early
        summary["elastic"] = self.elastic
        if timeline is not None:
            summary["timeline"] = str(timeline)
        if cfg.run.profile and self.profiler is not None:
            gathered = collectives.gather(comm, (self.profiler.totals.tolist(), self.profiler.steps))
            summary["profile"] = self.profiler.summary([g[0] for g in gathered], [g[1] for g in gathered])
        stats = self._stats
        if stats is not None:
            summary["featurewise_mean"] = stats.mean.tolist()
            summary["featurewise_std"] = stats.std.tolist()
        self.callbacks.train_end(ctx, summary)
        return summary

    def finish(self, summary: dict[str, Any]) -> None:
        """Writes summary.json and the closing line (rank 0); the tracker gets the finished run."""
        self.outputs.finish(summary)
        for tracker in self.tracking or ():
            tracker.finish()
        best = summary["best"]
        self.progress.print(f"finished in {summary['wall_time_s']:.1f}s; best {best['metric']} "
                            f"{best[best['metric']]:.4f} at epoch {best['epoch']}; outputs in {self.outputs.dir}")

    def _reporters(self, run_state: TrainingState, world: World, plan: RunPlan) -> list[Callback]:
        """The run's reporting for this entry (rank 0 writes; the TensorBoard file of a previous entry is closed)."""
        cfg, outputs = self.cfg, self.outputs
        if self.events is not None:
            self.events.close()
        self.events = EventWriter(outputs.dir / "tensorboard", enabled=world.rank == 0 and cfg.run.tensorboard)
        reporters: list[Callback] = [self.progress, MetricsLog(outputs, run_state, cfg.run.log_every_steps),
                                     TensorBoardLog(self.events, run_state, cfg.run.log_every_steps,
                                                    self.task.metric_names())]
        if self.profiler is not None and cfg.run.profile:
            reporters.append(ProfileReport(self.profiler, outputs, self.progress))
        if plan.pruner.enabled:
            reporters.append(SparsityReport(require_prunable(self.backend), cfg.prune, outputs))
        if cfg.tracking.enabled() and world.rank == 0:  # rank 0 alone imports and talks to trackers
            if self.tracking is None:
                resuming = bool(run_state.history) or cfg.train.resume is not None or self.elastic
                self.tracking = rank0_trackers(cfg, outputs.dir, resuming, self.progress.print, self.user_tracker)
            reporters += self.tracking  # after MetricsLog: metrics.jsonl holds the epoch when they send
        return reporters

    def _start(self, run_state: TrainingState, plan: RunPlan, outputs: RunOutputs, checkpointer: Checkpointer) -> None:
        """First entry: resume (train.resume), give every rank rank 0's state, create the run's outputs."""
        cfg, backend, comm, dataset, world = self.cfg, self.backend, self.comm, self.dataset, plan.world
        resume = collectives.find_resume(comm, cfg, world.rank)
        skipped: list[str] = []
        if resume is not None:
            if world.rank == 0:
                backend.load(resume.path, "checkpoint")
            run_state.assign(resume.state)
        elif cfg.train.init_from:  # fine-tuning: weights only, read by rank 0
            skipped = comm.agree(lambda: backend.load(init_source(cfg), "init", cfg.train.init_skip_mismatched)
                                 if world.rank == 0 else [])
        if cfg.distill.teacher:
            comm.agree(lambda: backend.load(init_source(cfg, cfg.distill.teacher, "distill.teacher"), "teacher")
                       if world.rank == 0 else [])
        backend.sync()
        def start_outputs() -> None:
            outputs.start(to_yaml(cfg), history=run_state.history if resume else None, resume_step=run_state.step,
                          overwrite=cfg.run.overwrite)
            if cfg.data.name in ("tokens", "text"):  # `generate` reads the run's own copy
                outputs.copy_in(token_directory(cfg.data) / TOKENIZER_FILE)

        comm.agree(start_outputs)
        checkpointer.remove_leftovers()
        run_state.started = True
        say, placement = self.progress.print, self.placement
        say(f"hvdtrain {__version__}: backend {backend.name} ({backend.framework_version()}), {world.size} rank(s) "
            f"via {world.controller}{' (elastic)' if self.elastic else ''}, device {placement.device}, "
            f"{placement.threads} thread(s)/rank; {cfg.model.name} with {self.num_params:,} parameters; "
            f"{cfg.data.name}: {len(dataset.train)} train / {len(dataset.val)} val samples"
            + (f", {self.inputs.workers} data worker(s)/rank" if self.inputs.workers else ""))
        alone = world.size == 1 and not self.elastic  # StepPolicy.allreduce is off (docs/policy.md)
        say(plan.policy.describe() + ("; one rank: gradients not allreduced" if alone else ""))
        self._compile_report()
        if cfg.run.print_config:
            say("resolved config:\n  " + to_yaml(cfg).rstrip().replace("\n", "\n  "))
        else:
            say(f"config: {outputs.dir / 'config.yaml'} (run.print_config=true prints it here)")
        if resume is not None:
            say(f"resuming from {resume.path} (epoch {run_state.epoch}, sample {run_state.position}, "
                f"step {run_state.step})")
        elif cfg.train.init_from:
            say(f"weights from {cfg.train.init_from}" + (f"; freshly initialised: {', '.join(skipped)}"
                                                         if skipped else ""))

    def _augment_pipeline(self, world: World) -> AugmentPipeline:
        from hvdtrain.backend import augment_kernel_module

        aug, train = self.cfg.augment, self.dataset.train
        self._stats = None
        if aug.featurewise_center or aug.featurewise_std_normalization:
            self._stats = featurewise_stats(lambda idx: pixels(train.read(idx)[0]), len(train), world.rank,
                                            world.size, aug.rescale, self.comm.allreduce_sum)
        native.prepare(aug)
        return AugmentPipeline(aug, augment_kernel_module(self.cfg.backend), self._stats,
                               on_device=augment_on_device(aug, self.placement))

    def _start_timeline(self, outputs: RunOutputs) -> Path | None:
        """Starts Horovod's timeline (horovod.timeline, or profile/timeline.json with run.profile) once the run
        directory exists; rank 0 writes it."""
        cfg = self.cfg
        name = cfg.horovod.timeline or (PROFILE_TIMELINE if cfg.run.profile else None)
        if name is None:
            return None
        path = outputs.dir / name
        if outputs.enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.comm.start_timeline(path, mark_cycles=cfg.horovod.timeline_mark_cycles)
        # No rank submits a collective of the run before rank 0 records: Horovod writes an operation's start
        # only if its timeline was on when the first rank asked for it (a rank running ahead into the first
        # collective left that operation's end without its start). Only this barrier may straddle the start.
        self.comm.barrier()
        return path

    def _train_epoch(self, state: Any, plan: RunPlan, augment: AugmentPipeline, checkpointer: Checkpointer,
                     ctx: CallbackContext) -> dict[str, Any]:
        """The rest of the current epoch from `position`: optimizer steps, each over a window of
        `accumulation_steps` micro-batches; checkpoints and elastic commits on their steps."""
        cfg, backend, comm, dataset, run_state = self.cfg, self.backend, self.comm, self.dataset, state.training
        world, policy, schedule = plan.world, plan.policy, plan.schedule
        batch, window_size = cfg.train.batch_size, policy.accumulation_steps
        steps_before = run_state.step - run_state.position // policy.global_batch
        epoch_plan = plan_epoch(len(dataset.train), rank=world.rank, world_size=world.size, batch_size=batch,
                                seed=cfg.seed, epoch=run_state.epoch, max_steps=plan.epoch_steps_cap(cfg, steps_before),
                                accumulation_steps=window_size, start=run_state.position,
                                order=dataset.train.epoch_order(cfg.seed, run_state.epoch, True))
        transform = augment.train_transform(cfg.seed, world.rank, run_state.epoch,
                                            run_state.position // (world.size * batch))
        # This rank's named sums since they were last folded into run_state.sums (a global total);
        # `skipped_seen`: how many of the loader's skipped samples are already in `local`.
        local, skipped_seen = self._empty_sums(), 0

        def fold() -> None:  # a collective: called at the same step on every rank
            nonlocal local
            run_state.sums = named.to_plain(named.add(named.from_plain(run_state.sums),
                                                      collectives.fold_sums(comm, local)))
            local = self._empty_sums()

        self.callbacks.epoch_begin(ctx, run_state.epoch + 1)
        start, time_before, wait_before = time.perf_counter(), run_state.epoch_time, run_state.data_wait
        lr = schedule.at(run_state.epoch * plan.steps_per_epoch + run_state.position // policy.global_batch)
        window: list[tuple[np.ndarray, np.ndarray]] = []
        taken = 0
        step_end, wait_seen = time.perf_counter(), 0.0
        with self.inputs.train_loader(epoch_plan.indices, transform) as loader:
            for item in self._agreed(loader):
                local[collectives.SKIPPED] += len(loader.skipped) - skipped_seen
                skipped_seen = len(loader.skipped)
                window.append(item)
                if len(window) < window_size:
                    continue
                lr = schedule.at(run_state.epoch * plan.steps_per_epoch + run_state.position // policy.global_batch)
                step_start = time.perf_counter()
                result = backend.train_step(window, lr)
                backend_seconds = time.perf_counter() - step_start
                local = named.add(local, self.task.step_sums(result, np.concatenate([b[1] for b in window])))
                window = []
                taken += 1
                run_state.step += 1
                run_state.position += policy.global_batch
                sparsity = plan.pruner.sparsity_due(run_state.step)
                if sparsity is not None:  # rank 0's masks for everyone
                    prunable = require_prunable(backend)
                    masks = plan.pruner.masks(prunable.prunable(), sparsity) if world.rank == 0 else None
                    prunable.set_masks(collectives.masks_from_rank0(comm, masks))
                run_state.epoch_time = time_before + time.perf_counter() - start
                run_state.data_wait = wait_before + loader.wait_seconds
                info = backend.step_info()
                now = time.perf_counter()
                # A checkpoint or commit below counts as the next step's "other" time in the profile.
                self.callbacks.step_end(ctx, StepReport(
                    epoch=run_state.epoch + 1, step=run_state.step, step_in_epoch=taken,
                    steps_in_epoch=epoch_plan.steps,
                    loss=result.loss_sum / result.count, samples_per_s=taken * policy.global_batch / (now - start),
                    lr=info.lr, loss_scale=info.loss_scale, data_wait_s=loader.wait_seconds - wait_seen,
                    backend_s=backend_seconds, comm_s=info.comm_seconds, total_s=now - step_end))
                step_end, wait_seen = now, loader.wait_seconds
                last = taken == epoch_plan.steps  # the epoch end follows: its own checkpoint and commit
                if not last and checkpointer.due_at_step(run_state.step):
                    fold()
                    self._consistent_batchnorm()
                    checkpointer.save(backend, run_state)
                if self.elastic and not last and run_state.step % cfg.elastic.commit_every_steps == 0:
                    fold()
                    state.commit()
        fold()
        totals = named.from_plain(run_state.sums)
        skipped, count = float(totals.pop(collectives.SKIPPED)), float(totals[COUNT])
        if cfg.data.log_samples:
            self._log_samples(epoch_plan.indices, epoch_plan.steps * window_size, run_state.epoch + 1)
        record: dict[str, Any] = {
            "epoch": run_state.epoch + 1,
            **{f"train_{name}": value for name, value in self.task.values(totals).items()},
            "lr": lr,
            "loss_scale": backend.step_info().loss_scale,
            "epoch_time_s": run_state.epoch_time,
            "samples_per_s": count / run_state.epoch_time,
            "data_wait_fraction": run_state.data_wait / run_state.epoch_time,
        }
        if self.inputs.checks_reads:
            record["skipped_samples"] = int(skipped)
        return record

    def _compile_report(self) -> dict[str, Any]:
        """train.compile: rank 0 says each new note once; the epoch's record gets the graphs compiled since the
        last report (`compiled_graphs`: 0 after the first epoch is what steady state means) and the compile time
        so far."""
        compiled = self.backend.step_info().compiled
        if compiled is None:
            return {}
        for note in compiled.notes:
            if note not in self._notes_said:
                self._notes_said.add(note)
                self.progress.print(note)
        new, self._graphs_seen = compiled.graphs - self._graphs_seen, compiled.graphs
        return {"compiled_graphs": new, "compile_time_s": compiled.seconds}

    def _empty_sums(self) -> Sums:
        """Zero named sums of this task, and of the samples skipped by the loader."""
        return {**self.task.empty_sums(self.width), collectives.SKIPPED: np.float64(0.0)}

    def _consistent_batchnorm(self) -> None:
        """Every rank's BatchNorm running statistics made identical (model.batchnorm_stats), a collective: what
        is evaluated, checkpointed and saved is then one model, whichever rank holds it."""
        if isinstance(self.backend, BatchNormStatistics):
            self.backend.sync_batchnorm_statistics(self.cfg.model.batchnorm_stats)

    def _agreed(self, loader: BatchLoader) -> Iterator[tuple[Any, ...]]:
        """The loader's batches; when reads can fail (on-disk data), every rank learns at each micro-batch
        whether one failed, so all stop together with the failing rank's message instead of waiting forever."""
        batches = iter(loader)
        while True:
            failure: BaseException | None = None
            try:
                item = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - agreed on, then raised on every rank
                failure = exc
            if self.inputs.checks_reads:
                collectives.stop_on_failure(self.comm, failure)
            elif failure is not None:
                raise failure
            yield item

    def _log_samples(self, indices: np.ndarray, micro_batches: int, epoch: int) -> None:
        """data.log_samples: rank 0 writes samples/epoch-NNN.tsv, every rank's samples of this epoch (from where
        this process started it) with their micro-batch, named by the source (a collective)."""
        batch, train = self.cfg.train.batch_size, self.dataset.train
        mine = [(i // batch, train.describe(int(index))) for i, index in enumerate(indices[:micro_batches * batch])]
        everyone = collectives.gather(self.comm, mine)
        self.outputs.write_samples(epoch, everyone)

    def _summary(self, world: World, plan: RunPlan, history: list[dict[str, Any]],
                 steps_per_rank: list[int]) -> dict[str, Any]:
        cfg, backend, policy = self.cfg, self.backend, plan.policy
        first = self.task.metric_names()[0] if self.task.metrics else "loss"
        metric = f"val_{first}" if history[-1].get(f"val_{first}") is not None else f"train_{first}"
        pick = min if self.task.lower_is_better(metric) else max
        best = pick(history, key=lambda r: r[metric])
        compiled = backend.step_info().compiled
        return {
            "backend": backend.name,
            "framework_version": backend.framework_version(),
            "hvdtrain_version": __version__,
            "world_size": world.size,
            "controller": world.controller,
            "device": self.placement.device,
            "threads_per_rank": self.placement.threads,
            "model": cfg.model.name,
            "num_parameters": self.num_params,
            "dataset": cfg.data.name,
            "task": cfg.task,
            "loss": self.task.loss,
            "metrics": list(self.task.metric_names()),
            "class_names": list(self.dataset.class_names),
            "image_shape": list(self.dataset.image_shape),
            "epochs": len(history),
            "steps": steps_per_rank[0],
            "steps_per_rank": steps_per_rank,
            "global_batch_size": policy.global_batch,
            "accumulation_steps": policy.accumulation_steps,
            "base_lr": policy.base_lr,
            "scaled_lr": policy.scaled_lr,
            "precision": policy.step.precision,
            "compression": policy.step.compression,
            "reduce_op": policy.step.reduce_op,
            "compile": cfg.train.compile,
            # This rank's (rank 0's) compiling: wall time of the calls that compiled, graphs compiled.
            "compile_time_s": 0.0 if compiled is None else compiled.seconds,
            "compiled_graphs": 0 if compiled is None else compiled.graphs,
            "final": history[-1],
            "best": {"metric": metric, **best},
            "mean_samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
            "config_hash": config_hash(cfg),
        }

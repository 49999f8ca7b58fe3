"""The training policy under real launchers, on both backends: accumulation equivalence and allreduce
counts, fp16 overflow skipping, half-precision and compressed training, clipping, LR schedules, Adasum.

Each feature is shown to act, not only to train: the dtype on the wire of every gradient allreduce (Horovod's
timeline), the compute dtype inside a training step and the Adasum update against its formula
(tests/scripts/step_probe.py).

Tolerances: accumulating N micro-batches of B and one batch of N*B see the same samples and average the
same gradients, so the weights may differ only by float32 summation order (<= 1e-5, as for the 2-ranks
vs 1-rank parity); a different global batch gives differences above 1e-3. Accuracy bands on digits: fp32
reaches about 0.98 (tests/distributed/test_training.py requires 0.95); bf16, fp16 and fp16 compression
must reach 0.95 as well. The LR read back from each optimizer must match the documented formula to a
relative 1e-6 (TensorFlow keeps it as a float32 variable). Average and Adasum updates must match their
formulas to a relative 1e-5, while Adasum and Average differ by more than 10%.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import run_pool
from conftest import (
    REPO,
    launcher_prefix,
    max_weight_diff,
    read_metrics,
    read_summary,
    read_weights,
    run_hvdtrain,
    train_many,
)
from run_pool import PoolRun
from shared_runs import batching_runs

pytestmark = pytest.mark.distributed

BACKENDS = ["torch", "tensorflow"]
ACCUM_TOL = 1e-5


def no_scaling(small_config: Path, backend: str) -> list[str]:
    return ["--config", str(small_config), f"backend={backend}", "policy.lr_scaling=none"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulated_micro_batches_equal_one_large_batch(backend: str,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    # np=1 x 8 x accumulation 4 and np=2 x 8 x accumulation 2 against np=1 x 32, all at LR 0.2 (optim.lr scaled by
    # world size x accumulation): only the batching differs (shared_runs.BatchingRuns).
    runs = batching_runs(backend, tmp_path_factory)
    reference = read_weights(runs.reference)
    for name, run_dir in (("acc4", runs.acc4), ("np2_acc2", runs.mpi)):
        summary = read_summary(run_dir)
        assert summary["steps"] == 5 and summary["global_batch_size"] == 32
        assert summary["scaled_lr"] == pytest.approx(0.2)
        diff = max_weight_diff(read_weights(run_dir), reference)
        print(f"{backend} {name}: max |w - w(batch 32)| = {diff:.3g}")
        assert diff <= ACCUM_TOL
    # Sensitive: one window fewer (a global batch of 16) gives clearly different weights.
    assert max_weight_diff(read_weights(runs.batch16), reference) > 1e-3


def timeline_events(timeline: Path) -> list[dict]:
    """A Horovod timeline's events. Horovod writes a JSON array and closes it only at shutdown: the file may end
    in a comma, or in the middle of an event."""
    text = timeline.read_text().strip().rstrip(",")
    try:
        return json.loads(text if text.endswith("]") else text + "]")
    except json.JSONDecodeError:
        return json.loads(text[:text.rindex("},") + 1] + "]")


def is_gradient(tensor: str) -> bool:
    """Gradient tensors: torch's DistributedOptimizer names them allreduce.<parameter>, the TensorFlow backend
    hvdtrain.grads*; hvdtrain's own sums are allreduce.hvdtrain.* on torch, HorovodAllreduce on TensorFlow (its
    eager allreduce does not take a name)."""
    return tensor.startswith("hvdtrain.grads") or (tensor.startswith("allreduce.") and "hvdtrain." not in tensor)


def timeline_collectives(timeline: Path) -> Counter:
    """(tensor, operation, dtype) of every finished collective in a Horovod timeline, counted: Horovod opens an
    operation per tensor with a "B" event named after it (ALLREDUCE, ADASUM, ...), nests its activities in it,
    and closes it with an "E" event whose args give the dtype the collective sent (Timeline::End). An "E" with
    no open "B" closes an operation asked for before the timeline started: hvdtrain's barrier right after
    starting it (hvdtrain/training/engine.py; named HorovodAllreduce on TensorFlow), never a gradient's. Not
    counted."""
    events = timeline_events(timeline)
    tensors = {e["pid"]: e["args"]["name"] for e in events
               if e.get("name") == "process_name" and "name" in e.get("args", {})}
    open_events: dict[int, list[str]] = {}
    done: Counter = Counter()
    for e in events:
        if e.get("ph") == "B":
            open_events.setdefault(e["pid"], []).append(e["name"])
        elif e.get("ph") == "E":
            if not open_events.get(e["pid"]):
                assert not is_gradient(tensors.get(e["pid"], "")), (tensors.get(e["pid"]), e)
                continue
            operation = open_events[e["pid"]].pop()
            if "dtype" in e.get("args", {}):
                done[tensors[e["pid"]], operation, e["args"]["dtype"]] += 1
    return done


def wire_dtypes(timeline: Path, gradients: bool) -> Counter:
    """(operation, dtype) of the gradient collectives (or, with gradients=False, of the other allreduces)."""
    counts: Counter = Counter()
    for (tensor, op, dtype), n in timeline_collectives(timeline).items():
        if is_gradient(tensor) == gradients and (gradients or op == "ALLREDUCE"):
            counts[op, dtype] += n
    return counts


def reductions_per_gradient(timeline: Path) -> Counter:
    """How many times each gradient tensor was reduced (any operation)."""
    counts: Counter = Counter()
    for (tensor, _, _), n in timeline_collectives(timeline).items():
        if is_gradient(tensor):
            counts[tensor] += n
    return counts


def gradient_allreduces(timeline: Path) -> int:
    """ALLREDUCE operations on gradient tensors recorded in a Horovod timeline (the metric sums left out)."""
    return sum(n for (op, _), n in wire_dtypes(timeline, gradients=True).items() if op == "ALLREDUCE")


@pytest.mark.races  # reads Horovod's timeline: what the ranks ask for, in the order they ask
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulation_divides_allreduce_calls(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    # 5 optimizer steps each: of 1 micro-batch per rank (gloo) and of 2 (mpi, accumulation 2). Every gradient
    # tensor is reduced once per optimizer step, so accumulation 2 halves the allreduces per micro-batch.
    runs = batching_runs(backend, tmp_path_factory)
    counts, micro_batches = {}, {}
    for name, run_dir, window in (("gloo", runs.gloo, 1), ("mpi", runs.mpi, 2)):
        steps = read_summary(run_dir)["steps"]
        reductions = reductions_per_gradient(run_dir / "timeline.json")
        assert len(reductions) >= 4 and set(reductions.values()) == {steps}, reductions
        counts[name], micro_batches[name] = gradient_allreduces(run_dir / "timeline.json"), steps * window
        # Without policy.compression the gradients cross the wire as they are: float32.
        assert set(wire_dtypes(run_dir / "timeline.json", gradients=True)) == {("ALLREDUCE", "float32")}
    print(f"{backend}: gradient allreduces {counts} for micro-batches {micro_batches}")
    assert counts["mpi"] > 0 and counts["gloo"] / micro_batches["gloo"] == 2 * counts["mpi"] / micro_batches["mpi"]


@pytest.mark.races  # reads Horovod's timeline: what the ranks ask for, in the order they ask
@pytest.mark.parametrize("backend", BACKENDS)
def test_horovod_knobs_reach_horovod(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The mpirun run sets fusion off, a 2 ms cycle and a 30 s stall check: Horovod reads them (its settings in the
    # summary), and its timeline shows no tensor packed into the fusion buffer. Fusion on (the default) does pack
    # them: test_reduced_precision_trains_digits checks that on the same MPI controller.
    run_dir = batching_runs(backend, tmp_path_factory).mpi
    assert "MEMCPY_IN_FUSION_BUFFER" not in (run_dir / "timeline.json").read_text()
    settings = read_summary(run_dir)["horovod_settings"]
    assert settings["HOROVOD_CYCLE_TIME"] == "2" and settings["HOROVOD_STALL_CHECK_TIME_SECONDS"] == "30"
    assert settings["HOROVOD_FUSION_THRESHOLD"] == "0"


@pytest.fixture(scope="module")
def step_probe(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """tests/scripts/step_probe.py's reports (compute dtypes, Adasum against Average, fp16 overflow, LR after a
    restore) for a backend: one mpirun -np 2 start per backend, shared by the tests that read them."""
    reports: dict[str, dict[str, Any]] = {}

    def probe(backend: str) -> dict[str, Any]:
        if backend not in reports:
            out = tmp_path_factory.mktemp(f"probe-{backend}")
            cmd = [*launcher_prefix("mpirun", 2), sys.executable, str(REPO / "tests" / "scripts" / "step_probe.py"),
                   backend, str(out)]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            reports[backend] = {key: json.loads((out / f"{key}.json").read_text())
                                for key in ("dtypes", "adasum", "overflow", "restore", "clip")}
        return reports[backend]

    return probe


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_overflow_skips_the_step_on_every_rank(backend: str, step_probe: Callable[[str], dict[str, Any]]) -> None:
    # tests/scripts/overflow_step.py's steps at np=2 (run by step_probe.py): rank 0 alone overflows.
    reports = step_probe(backend)["overflow"]
    assert [report["rank"] for report in reports] == [0, 1]
    assert not reports[0]["overflow_loss_finite"] and reports[1]["overflow_loss_finite"]  # only rank 0 overflowed
    for report in reports:
        assert report["unchanged_by_overflow"], report  # skipped on both ranks, weights untouched
        assert report["scale_after"] == report["scale_before"] / 2
        assert report["changed_later"] and report["finite"]
    assert reports[0]["checksum"] == reports[1]["checksum"]  # the ranks stayed identical


PRECISIONS = {"bf16+compression": ["policy.precision=bf16", "policy.compression=fp16"],
              "fp16": ["policy.precision=fp16"]}
ADASUM = ["policy.reduce_op=adasum", "optim.lr=0.05"]
_TIMELINE_RUNS: dict[str, Path] = {}


def timeline_runs(backend: str, factory: pytest.TempPathFactory) -> Path:
    """Both PRECISIONS runs and the `adasum` run of configs/digits.yaml at np=2 under mpirun, each recording
    Horovod's timeline: one job (conftest.train_many; not pooled, since horovod.timeline is a Horovod setting)."""
    if backend not in _TIMELINE_RUNS:
        root = factory.mktemp(f"timeline-{backend}")
        runs = [["--config", "configs/digits.yaml", f"backend={backend}", *options, "horovod.timeline=timeline.json",
                 "run.progress=off", f"run.dir={root / name}"]
                for name, options in [*PRECISIONS.items(), ("adasum", ADASUM)]]
        train_many(runs, root / "job.json", launcher="mpirun", np_=2)
        _TIMELINE_RUNS[backend] = root
    return _TIMELINE_RUNS[backend]


@pytest.mark.races  # reads Horovod's timeline: what the ranks ask for, in the order they ask
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", PRECISIONS)
def test_reduced_precision_trains_digits(tmp_path_factory: pytest.TempPathFactory, backend: str, name: str) -> None:
    # One run serves two features: bf16 compute with fp16 compression, and fp16 compute (loss scaling) without.
    # Fails if either precision loses accuracy, if fp16 keeps no loss scale, or if the gradient allreduces do
    # not send float16 exactly when policy.compression=fp16 (Horovod's timeline records the dtype of every
    # collective): compression silently off would send float32, and the metric sums must stay float64.
    options = PRECISIONS[name]
    run_dir = timeline_runs(backend, tmp_path_factory) / name
    summary = read_summary(run_dir)
    accuracy = summary["final"]["val_accuracy"]
    gradients = wire_dtypes(run_dir / "timeline.json", gradients=True)
    others = wire_dtypes(run_dir / "timeline.json", gradients=False)
    print(f"{backend} {options}: val_accuracy {accuracy:.4f}, {summary['mean_samples_per_s']:.0f} samples/s; "
          f"gradient allreduces {dict(gradients)}, other allreduces {dict(others)}")
    assert accuracy >= 0.95
    settings = dict(option.split("=") for option in options)
    compressed = settings.get("policy.compression") == "fp16"
    assert summary["precision"] == settings["policy.precision"]
    assert summary["compression"] == ("fp16" if compressed else "none")
    scales = [m["loss_scale"] for m in read_metrics(run_dir)]
    fp16 = settings["policy.precision"] == "fp16"
    assert all(s is not None and s >= 1 for s in scales) if fp16 else all(s is None for s in scales)
    # Every gradient tensor reduced once per optimizer step, always in the one expected dtype.
    assert set(gradients) == {("ALLREDUCE", "float16" if compressed else "float32")}
    reductions = reductions_per_gradient(run_dir / "timeline.json")
    assert len(reductions) >= 4 and set(reductions.values()) == {summary["steps"]}, reductions
    assert set(others) == {("ALLREDUCE", "float64")}
    if backend == "torch":  # Horovod's fusion buffer (on by default) packs the gradients of a step together
        assert "MEMCPY_IN_FUSION_BUFFER" in (run_dir / "timeline.json").read_text()


COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restored_state_steps_at_the_given_lr(backend: str, step_probe: Callable[[str], dict[str, Any]]) -> None:
    # An elastic rollback restores the optimizer's LR variable: the next step must still use the LR it is given
    # (the TensorFlow backend once skipped re-assigning an unchanged LR and stepped at optim.lr instead).
    report = step_probe(backend)["restore"]
    assert report["lr"] == 1.0
    assert report["max_diff"] <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_precision_sets_the_compute_dtype(backend: str, step_probe: Callable[[str], dict[str, Any]]) -> None:
    # The dtype of the activations inside a real training step, for each policy.precision (the accuracy runs
    # above would pass in fp32 too): fails if bf16/fp16 silently computed in float32 (torch: no autocast;
    # Keras: no mixed dtype policy while the layers are built), or if the weights left float32.
    reports = step_probe(backend)["dtypes"]
    for precision, report in reports.items():
        print(f"{backend} {precision}: {report}")
    assert reports.keys() == COMPUTE_DTYPES.keys()
    for precision, dtype in COMPUTE_DTYPES.items():
        report = reports[precision]
        assert [report[f"{layer}_output"] for layer in ("conv", "dense", "logits")] == [dtype] * 3, (precision, report)
        assert report["weight_dtypes"] == ["float32"], (precision, report)
        assert report["weights_changed"] and report["loss_finite"], (precision, report)
        if backend == "tensorflow":  # Keras' layers say so too: computing in `dtype`, keeping float32 variables
            assert {report[f"{layer}_compute_dtype"] for layer in ("conv", "dense", "logits")} == {dtype}
            assert {report[f"{layer}_variable_dtype"] for layer in ("conv", "dense", "logits")} == {"float32"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_bounds_the_averaged_gradient(backend: str, step_probe: Callable[[str], dict[str, Any]]) -> None:
    # One plain-SGD step at np=2, each rank on its own batch (tests/scripts/step_probe.py): the weights move by
    # exactly lr x the clipped averaged gradient, so the step's norm / lr must equal the bound. Clipping each
    # rank's gradient before averaging would give a shorter step; no clipping, the unclipped norm (far above).
    report = step_probe(backend)["clip"]
    print(f"{backend}: {report}")
    assert report["unclipped_norm"] > 10 * report["clip"]
    assert report["clipped_norm"] == pytest.approx(report["clip"], rel=1e-3)


def expected_lr(step: int, base: float, peak: float, warmup: int, per_epoch: int, total: int, schedule: str) -> float:
    """docs/policy.md's formula, written out independently of hvdtrain/training/schedule.py."""
    ramp = peak if step >= warmup else base + (peak - base) * step / warmup
    if schedule == "step":  # milestones [2.5] epochs, gamma 0.5
        return ramp * (0.5 if step / per_epoch >= 2.5 else 1.0)
    if schedule == "cosine":  # min ratio 0.1
        return ramp * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    return ramp


LR_SCHEDULE = "step"


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """Per backend, one process each (pooled with other modules' runs, tests/run_pool.py): root/<backend>/lr, the
    epoch-based schedule run, and root/<backend>/lr-steps, the step-based one (train.max_steps=40,
    policy.warmup_steps=6, cosine), read by the two LR tests below."""
    common = ("data.name=synthetic", "data.synthetic_samples=256", "data.synthetic_shape=[4,4,1]",
              "data.val_fraction=0", "model.name=mlp", "model.hidden_units=[8]", "train.batch_size=8",
              "policy.accumulation_steps=2", "optim.lr=0.1", "optim.cosine_min_ratio=0.1", "run.log_every_steps=1",
              "run.progress=off")
    return [run for backend in BACKENDS for run in (
        PoolRun(backend, 1, (f"backend={backend}", *common, "train.epochs=4", "policy.warmup_epochs=1.5",
                             f"optim.schedule={LR_SCHEDULE}", "optim.step_milestones=[2.5]", "optim.step_gamma=0.5",
                             f"run.dir={root / backend / 'lr'}")),
        PoolRun(backend, 1, (f"backend={backend}", *common, "train.max_steps=40", "policy.warmup_steps=6",
                             "optim.schedule=cosine", f"run.dir={root / backend / 'lr-steps'}")))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_at_every_step_follows_the_formula(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    # The LR read back from the framework's optimizer at every step. 256 samples, batch 8 x accumulation 2: 16
    # optimizer steps per epoch, 64 in all; warmup 1.5 epochs = 24 steps (a new LR every step), then the step
    # schedule (the same LR for 16 steps, then halved at 2.5 epochs); linear scaling on one rank: peak = 0.1 x 1 x
    # 2. The constant and cosine schedules follow the same formula through the same loop in-process
    # (tests/unit/training/test_engine.py), where the backend only receives the LR.
    schedule = LR_SCHEDULE
    run_dir = run_pool.trained(__file__, tmp_path_factory) / backend / "lr"
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 65))
    for record in steps:
        t = record["step"] - 1
        want = expected_lr(t, 0.1, 0.2, 24, 16, 64, schedule)
        assert record["lr"] == pytest.approx(want, rel=1e-6), (t, record["lr"], want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_based_run_takes_max_steps_at_the_lr_of_the_formula(tmp_path_factory: pytest.TempPathFactory,
                                                                   backend: str) -> None:
    # docs/policy.md, step-based runs, read back from the framework's optimizer: 16 steps an epoch, so
    # train.max_steps=40 is epochs 1 and 2 and 8 steps of epoch 3; a ramp from zero over 6 steps (peak 0.2), then
    # cosine from step 6 to step 40 down to 0.1 x peak.
    run_dir = run_pool.trained(__file__, tmp_path_factory) / backend / "lr-steps"
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 41))
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2, 3] and read_summary(run_dir)["steps"] == 40
    for record in steps:
        t = record["step"] - 1
        want = 0.2 * (t + 1) / 7 if t < 6 else 0.2 * (0.1 + 0.9 * (1 + math.cos(math.pi * (t - 6) / 34)) / 2)
        assert record["lr"] == pytest.approx(want, rel=1e-6), (t, record["lr"], want)


def test_two_ranks_print_one_policy_line_with_scaled_lr(tmp_path_factory: pytest.TempPathFactory) -> None:
    # mpirun -np 2, micro-batch 8, accumulation 2, progress lines (shared_runs.BatchingRuns.mpi): rank 0 alone
    # prints the policy, with the LR scaled by world size x accumulation.
    proc = batching_runs("torch", tmp_path_factory).mpi_proc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("policy: ")]
    assert len(lines) == 1, proc.stdout
    assert "2 rank(s) x micro-batch 8 x accumulation 2 = global batch 32; LR 0.05 -> 0.2 (x4)" in lines[0]


@pytest.mark.races  # reads Horovod's timeline: what the ranks ask for, in the order they ask
@pytest.mark.parametrize("backend", BACKENDS)
def test_adasum_trains_under_mpi(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    # Fails if policy.reduce_op=adasum does not reach Horovod from the command line: the timeline must show
    # every gradient reduced by an ADASUM operation (an average would show ALLREDUCE), the metric sums still
    # allreduced. What Adasum computes is checked against its formula in test_adasum_step_follows_its_formula.
    run_dir = timeline_runs(backend, tmp_path_factory) / "adasum"
    summary = read_summary(run_dir)
    gradients = wire_dtypes(run_dir / "timeline.json", gradients=True)
    print(f"{backend} adasum: val_accuracy {summary['final']['val_accuracy']:.4f}, gradient collectives "
          f"{dict(gradients)}")
    assert summary["reduce_op"] == "adasum" and summary["scaled_lr"] == 0.05  # Horovod's CPU rule: x 1
    assert summary["final"]["val_accuracy"] >= 0.95
    assert set(gradients) == {("ADASUM", "float32")}
    reductions = reductions_per_gradient(run_dir / "timeline.json")
    assert len(reductions) >= 4 and set(reductions.values()) == {summary["steps"]}, reductions
    assert set(wire_dtypes(run_dir / "timeline.json", gradients=False)) == {("ALLREDUCE", "float64")}


@pytest.mark.races
@pytest.mark.parametrize("backend", BACKENDS)
def test_adasum_is_refused_on_gloo(tmp_path: Path, backend: str) -> None:
    proc = run_hvdtrain(["--config", "configs/digits.yaml", f"backend={backend}", *ADASUM,
                         f"run.dir={tmp_path / 'gloo'}"], launcher="gloo", np_=2, check=False)
    assert proc.returncode != 0
    assert "<stderr>:Traceback" not in proc.stderr  # (horovodrun itself reports the exit with a traceback)
    errors = [line for line in proc.stderr.splitlines() if "hvdtrain: error: policy.reduce_op=adasum needs" in line]
    assert len(errors) == 2, proc.stderr  # every rank says it
    assert not (tmp_path / "gloo").exists()


ADASUM_TOL = 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_adasum_step_follows_its_formula(backend: str, step_probe: Callable[[str], dict[str, Any]]) -> None:
    # One plain-SGD step at np=2 from the same weights on the same two batches (tests/scripts/step_probe.py):
    # the average step must be (g0 + g1) / 2 and the Adasum step adasum(g0, g1) per tensor, where the two
    # differ by far more than float noise (the ranks' gradients are far from parallel). Fails if Adasum were
    # silently an average (off by ~100%), or applied to the whole gradient vector instead of per tensor.
    # Tolerance: updates are read back as (w_before - w_after) / lr in float32 (measured <= 1e-6 relative).
    report = step_probe(backend)["adasum"]
    print(f"{backend}: {report}")
    assert report["same_start"] and report["ranks_identical"], report
    assert abs(report["gradient_cosine"]) < 0.9, report  # a case where Adasum and Average differ
    assert report["average_error"] <= ADASUM_TOL, report
    assert report["adasum_error_per_tensor"] <= ADASUM_TOL, report
    assert report["adasum_vs_average"] > 0.1, report
    assert report["adasum_error_whole"] > 100 * ADASUM_TOL, report  # the per-tensor match is not a coincidence

"""train.compile on both backends under mpirun at np=2: compiled steps train exactly as eager ones, compile only in
the first epoch, and their checkpoints resume in the other mode.

One job per backend (conftest.train_many, one start of each rank) trains, on digits with the small cnn, batch 16
per rank and accumulation 2 (a global batch of 64), 3 epochs of 10 optimizer steps (30 steps), evaluation batches of
180 (each rank's 179 or 180 validation samples in one: one evaluation shape per rank, one compile less):
- `eager` and `compiled`, each checkpointing every epoch;
- `killed_compiled`: a compiled run whose rank 1 is killed with SIGKILL after step 17 (tests/scripts/
  fault_callbacks.py; checkpoints every 5 steps), in a launch of its own before the job; the job resumes it eagerly
  (train.resume=auto: from step 15, half-way through epoch 2);
- `compiled_from_eager` resumes compiled from the eager run's checkpoint at step 15, the state a run killed there
  leaves (the reverse direction without a second kill: a kill -9 leaving its newest complete checkpoint is
  tests/distributed/test_long_runs.py's);
- `sync_bn`: model.sync_batchnorm with train.compile, which runs that part eagerly and says so in one line;
- `uncompilable`: a user model with Python the compiler cannot take (torch: a data-dependent `.item()`, a graph
  break; TensorFlow: `tf.py_function`, which has no XLA kernel): it trains, saying so in one line.

Tolerances: compilers reorder float32 sums (Inductor's fused kernels, XLA's), so compiled and eager per-step losses
and final metrics may differ by rounding that 30 SGD steps grow, well under 1e-4; a broken compiled step (Horovod's
gradient hooks not firing, accumulation or the loss scale lost) differs by far more. A resumed run's final weights
must match the uninterrupted run of the mode its checkpoint came from within 1e-5 (the issue's bound: one epoch of
the other mode's rounding fits in it).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
from conftest import (
    REPO,
    max_weight_diff,
    numbers,
    read_metrics,
    read_summary,
    read_weights,
    run_hvdtrain,
    together,
    train_many,
)

pytestmark = pytest.mark.distributed

BACKENDS = ["torch", "tensorflow"]
LOSS_TOL, RESUME_TOL = 1e-4, 1e-5
COMMON = ["data.name=digits", "model.name=cnn", "model.channels=[8,16]", "model.hidden_units=[32]", "train.epochs=3",
          "train.batch_size=16", "policy.accumulation_steps=2", "train.max_steps_per_epoch=10",
          "train.eval_batch_size=180", "optim.lr=0.025", "run.log_every_steps=1", "run.progress=off",
          "checkpoint.every_epochs=1", "checkpoint.every_steps=5", "checkpoint.keep_last=10"]
MID_EPOCH = "epoch-0001-step-00000015"  # half-way through the second epoch
_JOBS: dict[str, tuple[Path, str]] = {}
UNCOMPILABLE = """
def build(cfg, input_shape, num_classes):
    import sys
    if "torch" in sys.modules:
        import torch

        class Gated(torch.nn.Module):  # .item() on a tensor: Dynamo breaks the graph there
            def __init__(self):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh())
                self.head = torch.nn.Linear(16, num_classes)

            def forward(self, x):
                h = self.body(x)
                return self.head(h if h.abs().max().item() < 1e9 else h * 0)
        return Gated()
    import keras, tensorflow as tf

    class PythonTanh(keras.layers.Layer):  # tf.py_function (differentiable) has no XLA kernel
        def call(self, x):
            return tf.ensure_shape(tf.py_function(tf.tanh, [x], tf.float32), x.shape)

    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(16), PythonTanh(),
                             keras.layers.Dense(num_classes)])
"""


def compile_job(backend: str, factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The backend's runs (module docstring), trained once: both backends' jobs at the same time (most of a
    rank's start is one core importing its framework); their root and the job's output."""
    if not _JOBS:
        roots = {name: factory.mktemp(f"compile-{name}") for name in BACKENDS}
        outputs = together(*(partial(_train_job, name, roots[name]) for name in BACKENDS))
        _JOBS.update({name: (roots[name], out) for name, out in zip(BACKENDS, outputs, strict=True)})
    return _JOBS[backend]


def _train_job(backend: str, root: Path) -> str:
    def run(name: str, *options: str) -> list[str]:
        return [f"backend={backend}", *COMMON, *options, f"run.dir={root / name}"]

    marker = root / "killed"
    killed = run_hvdtrain([*run("killed_compiled", "train.compile=true", "callbacks.user=[fault_callbacks:Faults]")],
                          launcher="mpirun", np_=2, check=False,
                          env={"PYTHONPATH": str(REPO / "tests" / "scripts"), "HVDTRAIN_TEST_KILL_RANK": "1",
                               "HVDTRAIN_TEST_KILL_STEP": "17", "HVDTRAIN_TEST_KILL_MARKER": str(marker)})
    assert killed.returncode != 0 and marker.is_file(), killed.stderr[-3000:]
    runs = [run("eager"), run("compiled", "train.compile=true"),
            run("killed_compiled", "train.resume=auto"),  # eagerly, from its step-15 checkpoint
            run("compiled_from_eager", "train.compile=true",
                f"train.resume={root / 'eager' / 'checkpoints' / MID_EPOCH}"),
            run("sync_bn", "train.compile=true", "model.name=resnet", "model.width_multiplier=0.25", "model.depth=8",
                "model.sync_batchnorm=true", "train.epochs=1", "train.max_steps_per_epoch=2", "run.progress=lines"),
            run("uncompilable", "train.compile=true", "model.name=uncompilable:build", "train.epochs=1",
                "train.max_steps_per_epoch=2", "run.progress=lines")]
    (root / "uncompilable.py").write_text(UNCOMPILABLE)
    proc = train_many(runs, root / "job.json", launcher="mpirun", np_=2, env={"PYTHONPATH": str(root)})
    return proc.stdout


def step_losses(run_dir: Path) -> list[float]:
    """Rank 0's loss at every step (run.log_every_steps=1)."""
    return [json.loads(line)["loss"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_steps_train_as_eager_ones_and_compile_only_in_the_first_epoch(
        backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root, _ = compile_job(backend, tmp_path_factory)
    eager, compiled = root / "eager", root / "compiled"
    eager_losses, compiled_losses = step_losses(eager), step_losses(compiled)
    assert len(eager_losses) == len(compiled_losses) == 30
    worst = max(abs(a - b) for a, b in zip(eager_losses, compiled_losses, strict=True))
    print(f"{backend}: 30 steps, largest per-step loss difference {worst:.2e}")
    assert worst <= LOSS_TOL
    assert sum(eager_losses[-5:]) < sum(eager_losses[:5])  # it trained
    eager_final, compiled_final = numbers(read_metrics(eager)[-1]), numbers(read_metrics(compiled)[-1])
    assert compiled_final.pop("compiled_graphs") == 0
    for key, value in eager_final.items():
        assert compiled_final[key] == pytest.approx(value, abs=LOSS_TOL), key
    # Compiling happens in the first epoch (training and evaluation shapes), never after: counted, not timed.
    graphs = [record["compiled_graphs"] for record in read_metrics(compiled)]
    summary = read_summary(compiled)
    print(f"{backend}: graphs compiled per epoch {graphs}, compile_time_s {summary['compile_time_s']:.1f}")
    assert graphs[0] >= 2 and graphs[1:] == [0, 0]  # a training and an evaluation graph at least
    assert summary["compile"] is True and summary["compiled_graphs"] == graphs[0]
    assert summary["compile_time_s"] > 0
    assert read_summary(eager)["compile"] is False and read_summary(eager)["compile_time_s"] == 0.0
    assert "compiled_graphs" not in read_metrics(eager)[0]


@pytest.mark.races  # reads the run killed with SIGKILL
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_of_either_mode_resumes_in_the_other(backend: str,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    root, _ = compile_job(backend, tmp_path_factory)
    eager, compiled = read_weights(root / "eager"), read_weights(root / "compiled")
    eager_from_compiled = read_weights(root / "killed_compiled")
    compiled_from_eager = read_weights(root / "compiled_from_eager")
    # The last epoch of each resumed run is the other mode's: within rounding of both uninterrupted runs.
    print(f"{backend}: eager vs compiled {max_weight_diff(eager, compiled):.2e}, eager-from-compiled vs compiled "
          f"{max_weight_diff(eager_from_compiled, compiled):.2e}, compiled-from-eager vs eager "
          f"{max_weight_diff(compiled_from_eager, eager):.2e}")
    assert max_weight_diff(eager, compiled) <= LOSS_TOL
    assert max_weight_diff(eager_from_compiled, compiled) <= RESUME_TOL
    assert max_weight_diff(compiled_from_eager, eager) <= RESUME_TOL
    assert [r["epoch"] for r in read_metrics(root / "killed_compiled")] == [1, 2, 3]
    assert read_summary(root / "killed_compiled")["compile"] is False  # its last part ran eagerly
    # What export, convert, evaluate and train.init_from read is the same in both modes: the same files, the same
    # weight names, and torch's model.pt without torch.compile's wrapper prefix.
    assert eager.keys() == compiled.keys()
    finals = [sorted(p.name for p in (root / run).iterdir() if p.is_file()) for run in ("eager", "compiled")]
    assert finals[0] == finals[1]
    if backend == "torch":
        assert b"_orig_mod" not in (root / "compiled" / "model.pt").read_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_batchnorm_runs_eagerly_under_compile_and_says_so(backend: str,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    root, output = compile_job(backend, tmp_path_factory)
    lines = [line for line in output.splitlines() if "train.compile: model.sync_batchnorm" in line]
    assert len(lines) == 1, output[-3000:]  # rank 0 alone, once
    summary = read_summary(root / "sync_bn")
    assert summary["compile"] is True and summary["steps"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_the_compiler_cannot_take_trains_and_says_so(backend: str,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    root, output = compile_job(backend, tmp_path_factory)
    expected = "train.compile: graph breaks in the model" if backend == "torch" else \
        "train.compile: XLA cannot compile this model"
    lines = [line for line in output.splitlines() if expected in line]
    assert len(lines) == 1, output[-3000:]
    print(lines[0])
    summary = read_summary(root / "uncompilable")
    assert summary["steps"] == 2 and summary["final"]["val_loss"] > 0

"""A small numpy backend and a one-process communicator, so the training loop runs in-process in tests.

Neither imports a framework or Horovod: `FakeBackend` implements the `hvdtrain.backend.Backend` protocol
with a linear softmax model trained by SGD with momentum, and records every call the loop makes;
`FakeCommunicator` is rank 0 of a simulated world of `size` ranks. `run_elastic_simulated` stands in for
`hvdtrain.training.elastic.run_elastic` (which needs Horovod): the same state semantics, with resets
triggered by an `InjectedFailure` raised from the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.backend import BuildSpec, Placement, StepInfo, StepResult
from hvdtrain.distributed.communicator import Communicator, World
from hvdtrain.training.state import TrainingState


class InjectedFailure(RuntimeError):
    """Raised by `FakeBackend` at a chosen call: a killed process, or (under `run_elastic_simulated`) the
    failed collective of a dead peer, which Horovod reports as HorovodInternalError."""


class FakeCommunicator(Communicator):
    """Rank 0 of `size` ranks, in one process and without Horovod.

    The other ranks are simulated as mirrors of this one: `allreduce_sum` returns `values * size`,
    `allgather_object` `[obj] * size`, `broadcast_object` `obj` (rank 0's own). So sums over ranks are
    `size` times this rank's and means are this rank's. One exception: the early-stopping vote
    (`collectives.any_rank`, the only one-element allreduce), where the other ranks vote to stop at the
    vote numbers (1-based, one vote per epoch end) in `other_ranks_stop_at`, and not otherwise.
    `agree` and `check_same` are Communicator's own, over the simulated allgather.

    `size_after_reset`, if given, is the world size after an elastic reset (`reset()`).
    Every call is recorded in `calls` as (method, payload).
    """

    def __init__(self, size: int = 1, other_ranks_stop_at: Sequence[int] = (),
                 size_after_reset: int | None = None) -> None:
        super().__init__(hvd=None, as_tensor=np.asarray)
        if other_ranks_stop_at and size < 2:
            raise ValueError("a vote from another rank needs size >= 2")
        self.size = size
        self.other_ranks_stop_at = set(other_ranks_stop_at)
        self.size_after_reset = size_after_reset
        self.votes = 0
        self.calls: list[tuple[str, Any]] = []

    # --- lifecycle -----------------------------------------------------------------------------------
    def init(self) -> World:
        self.calls.append(("init", None))
        return self.world()

    def world(self) -> World:
        return World(rank=0, size=self.size, local_rank=0, local_size=self.size, controller="gloo")

    def reset(self) -> World:
        self.calls.append(("reset", None))
        if self.size_after_reset is not None:
            self.size = self.size_after_reset
        return self.world()

    def shutdown(self) -> None:
        self.calls.append(("shutdown", None))

    def running(self) -> bool:
        return ("init", None) in self.calls and ("shutdown", None) not in self.calls

    def nccl_built(self) -> bool:
        return False

    def is_collective_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, InjectedFailure)

    # --- collectives ---------------------------------------------------------------------------------
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        mine = np.asarray(values, dtype=np.float64)
        self.calls.append(("allreduce_sum", mine.tolist()))
        if mine.shape == (1,):  # the stop vote
            self.votes += 1
            return mine + (1.0 if self.votes in self.other_ranks_stop_at else 0.0)
        return mine * self.size

    def barrier(self) -> None:
        self.calls.append(("barrier", None))

    def allgather_object(self, obj: Any) -> list[Any]:
        self.calls.append(("allgather_object", obj))
        return [obj] * self.size

    def broadcast_object(self, obj: Any, name: str = "hvdtrain.broadcast") -> Any:
        self.calls.append(("broadcast_object", name))
        return obj

    def start_timeline(self, path: Path, mark_cycles: bool) -> None:
        self.calls.append(("start_timeline", str(path)))

    def stop_timeline(self) -> None:
        self.calls.append(("stop_timeline", None))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


class FakeBackend:
    """The Backend protocol in numpy: logits = flatten(x) @ W + b, cross-entropy, SGD with momentum
    (spec.optim.momentum) at the LR the loop gives, gradients averaged over the window's micro-batches.
    Deterministic: the same calls give bitwise the same weights.

    Records: `windows` (every train_step's micro-batches, copied), `lrs`, `step_stats`, `trajectory` (the
    weights after every step), `evals` (eval_step batch sizes), `saves` / `loads` ((kind, path)), and `calls`
    (method names in order).

    `eval_losses`: if given, the n-th eval_step reports mean loss eval_losses[n] and accuracy 1 - that (use
    one eval batch per epoch: train.eval_batch_size >= the validation set). `fail_at`: {method: n} raises
    `InjectedFailure` at the n-th call (1-based) of that method, once, before it changes anything.
    """

    name = "fake"

    def __init__(self, comm: Communicator | None = None, *, eval_losses: Sequence[float] | None = None,
                 fail_at: dict[str, int] | None = None) -> None:
        self.comm: Communicator = comm if comm is not None else FakeCommunicator()
        self.eval_losses = list(eval_losses) if eval_losses is not None else None
        self.fail_at = dict(fail_at or {})
        self.counts: dict[str, int] = {}
        self.calls: list[str] = []
        self.spec: BuildSpec | None = None
        self.W = np.zeros((0, 0))
        self.b = np.zeros(0)
        self.v_W = np.zeros((0, 0))
        self.v_b = np.zeros(0)
        self.momentum = 0.0
        self.last_lr = 0.0
        self.windows: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self.lrs: list[float] = []
        self.step_stats: list[StepResult] = []
        self.step_correct: list[float] = []  # each step's correctly classified samples
        self.trajectory: list[dict[str, np.ndarray]] = []
        self.evals: list[int] = []
        self.saves: list[tuple[str, Path]] = []
        self.loads: list[tuple[str, Path]] = []

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        self.counts[method] = self.counts.get(method, 0) + 1
        if self.fail_at.get(method) == self.counts[method]:
            del self.fail_at[method]
            raise InjectedFailure(f"injected failure at {method} call {self.counts[method]}")

    # --- protocol ------------------------------------------------------------------------------------
    def setup(self, threads_per_rank: int) -> Placement:
        self._enter("setup")
        self.comm.init()
        return Placement(device="cpu", threads=threads_per_rank or 1)

    def framework_version(self) -> str:
        return f"numpy {np.__version__}"

    def build(self, spec: BuildSpec) -> int:
        self._enter("build")
        self.spec = spec
        features = int(np.prod(spec.image_shape))
        rng = np.random.default_rng(spec.seed)
        self.W = rng.normal(0.0, 0.01, size=(features, spec.num_classes))
        self.b = np.zeros(spec.num_classes)
        self.v_W, self.v_b = np.zeros_like(self.W), np.zeros_like(self.b)
        self.momentum = spec.optim.momentum if spec.optim.name == "sgd" else 0.0
        return self.W.size + self.b.size

    def sync(self) -> None:
        self._enter("sync")  # rank 0's state is this state

    def _forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, StepResult]:
        flat = x.reshape(len(x), -1).astype(np.float64)
        logits = flat @ self.W + self.b
        p = _softmax(logits)
        loss_sum = float(-np.log(p[np.arange(len(y)), y] + 1e-12).sum())
        return flat, p, StepResult(loss_sum, len(y), logits.astype(np.float32))

    def train_step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        self._enter("train_step")
        self.windows.append([(x.copy(), y.copy()) for x, y in batches])
        self.lrs.append(lr)
        g_W, g_b = np.zeros_like(self.W), np.zeros_like(self.b)
        loss_sum = correct = 0.0
        count, outputs = 0, list[np.ndarray]()
        for x, y in batches:
            flat, p, stats = self._forward(x, y)
            delta = p.copy()
            delta[np.arange(len(y)), y] -= 1.0
            g_W += flat.T @ delta / len(y) / len(batches)
            g_b += delta.mean(axis=0) / len(batches)
            loss_sum, count = loss_sum + stats.loss_sum, count + stats.count
            correct += float((stats.outputs.argmax(axis=1) == y).sum())
            outputs.append(stats.outputs)
        self.v_W = self.momentum * self.v_W + g_W
        self.v_b = self.momentum * self.v_b + g_b
        self.W = self.W - lr * self.v_W
        self.b = self.b - lr * self.v_b
        self.last_lr = lr
        result = StepResult(loss_sum, count, np.concatenate(outputs))
        self.step_stats.append(result)
        self.step_correct.append(correct)
        self.trajectory.append(self.weights())
        return result

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        self._enter("eval_step")
        self.evals.append(len(y))
        if self.eval_losses is not None:
            loss = self.eval_losses[len(self.evals) - 1]
            return StepResult(loss * len(y), len(y), self._forward(x, y)[2].outputs)
        return self._forward(x, y)[2]

    def state(self) -> dict[str, np.ndarray]:
        self._enter("state")
        return {"W": self.W.copy(), "b": self.b.copy(), "v_W": self.v_W.copy(), "v_b": self.v_b.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._enter("load_state")
        self.W, self.b = state["W"].copy(), state["b"].copy()
        self.v_W, self.v_b = state["v_W"].copy(), state["v_b"].copy()

    def save(self, directory: Path, kind: str) -> list[str]:
        self._enter("save")
        self.saves.append((kind, Path(directory)))
        if kind == "checkpoint":
            np.savez(Path(directory) / "state.npz", W=self.W, b=self.b, v_W=self.v_W, v_b=self.v_b)
            return ["state.npz"]
        np.savez(Path(directory) / "model.npz", W=self.W, b=self.b)
        return ["model.npz"]

    def load(self, source: Path, kind: str, skip_mismatched: bool = False) -> list[str]:
        self._enter("load")
        self.loads.append((kind, Path(source)))
        path = Path(source)
        path = path / ("state.npz" if (path / "state.npz").is_file() else "model.npz") if path.is_dir() else path
        with np.load(path) as data:
            self.W, self.b = data["W"].copy(), data["b"].copy()
            if kind == "checkpoint":
                self.v_W, self.v_b = data["v_W"].copy(), data["v_b"].copy()
        return []

    def weights(self) -> dict[str, np.ndarray]:
        return {"W": self.W.copy(), "b": self.b.copy()}

    def step_info(self) -> StepInfo:
        return StepInfo(lr=self.last_lr, loss_scale=None, comm_seconds=0.0)

    def reset(self) -> None:
        self._enter("reset")


class FakeElasticState:
    """`hvdtrain.training.elastic.run_elastic`'s ElasticState without Horovod's base class: the same
    save/restore/sync bodies (backend.state()/load_state() and TrainingState.copy()/assign()), and
    commit() = save() as in horovod.common.elastic.State (no host updates are ever pending here).
    `commits` records (step, position, epoch) at every save."""

    def __init__(self, training: TrainingState, backend: FakeBackend) -> None:
        self.training = training
        self.backend = backend
        self.commits: list[tuple[int, int, int]] = []
        self.restores: list[TrainingState] = []
        self._saved: tuple[Any, TrainingState] | None = None
        self.save()

    def save(self) -> None:
        self._saved = (self.backend.state(), self.training.copy())
        self.commits.append((self.training.step, self.training.position, self.training.epoch))

    def restore(self) -> None:
        assert self._saved is not None
        self.backend.load_state(self._saved[0])
        self.training.assign(self._saved[1])
        self.restores.append(self.training.copy())

    def sync(self) -> None:
        self.backend.sync()
        comm = self.backend.comm
        self.training.assign(TrainingState.from_dict(comm.broadcast_object(self.training.to_dict(),
                                                                           "hvdtrain.elastic")))
        self.save()

    def commit(self) -> None:
        self.save()


def run_elastic_simulated(body: Callable[[Any], Any], training: TrainingState, backend: FakeBackend,
                          states: list[FakeElasticState] | None = None) -> Any:
    """Horovod's `run_fn` loop (horovod/common/elastic.py) around `body`: sync, run; on a failed collective
    (here `InjectedFailure`) restore the last commit, reset the communicator and the backend, sync again and
    re-enter. The state object is appended to `states` for inspection."""
    state = FakeElasticState(training, backend)
    if states is not None:
        states.append(state)
    while True:
        state.sync()
        try:
            return body(state)
        except InjectedFailure:
            state.restore()
        backend.comm.reset()
        backend.reset()

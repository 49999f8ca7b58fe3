"""Every built-in metric, from named sums combined over 1, 2 and 3 uneven shards (as ranks would), equals
scikit-learn's value over the whole set within 1e-6; task resolution refuses what does not fit, in one line."""

from __future__ import annotations

import numpy as np
import pytest

from hvdtrain.errors import ConfigError
from hvdtrain.tasks import sums as named
from hvdtrain.tasks.task import COUNT, LOSS, TaskSpec, check_metric_field, resolve_task

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")
N = 257  # odd, so that 2 and 3 shards and batches of 16 are all uneven


def _data(task: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    if task == "classification":
        outputs = rng.normal(size=(N, 10)).astype(np.float32)
        targets = np.where(rng.random(N) < 0.5, outputs.argmax(1), rng.integers(0, 10, N)).astype(np.int64)
    elif task == "regression":
        targets = rng.normal(150.0, 70.0, size=(N, 2)).astype(np.float32)
        outputs = (targets + rng.normal(0.0, 40.0, size=(N, 2))).astype(np.float32)
    else:
        targets = (rng.random((N, 6)) < [0.5, 0.3, 0.1, 0.05, 0.6, 0.0]).astype(np.float32)  # label 5 never set
        outputs = (rng.normal(size=(N, 6)) + 2.0 * (targets - 0.5)).astype(np.float32)
    return outputs, targets


def _reference(name: str, outputs: np.ndarray, targets: np.ndarray) -> float:
    m = sklearn_metrics
    if name in ("mae", "rmse", "r2"):  # scikit-learn computes in its inputs' precision
        outputs, targets = outputs.astype(np.float64), targets.astype(np.float64)
    predicted = (outputs > 0).astype(int)
    return float({
        "accuracy": lambda: m.accuracy_score(targets, outputs.argmax(1)),
        "top5_accuracy": lambda: m.top_k_accuracy_score(targets, outputs, k=5, labels=list(range(10))),
        "mae": lambda: m.mean_absolute_error(targets, outputs),
        "rmse": lambda: m.root_mean_squared_error(targets, outputs),
        "r2": lambda: m.r2_score(targets, outputs),
        "f1_micro": lambda: m.f1_score(targets.astype(int), predicted, average="micro", zero_division=0),
        "f1_macro": lambda: m.f1_score(targets.astype(int), predicted, average="macro", zero_division=0),
        "exact_match": lambda: m.accuracy_score(targets.astype(int), predicted),
    }[name]())


def _sharded_values(spec: TaskSpec, outputs: np.ndarray, targets: np.ndarray, ranks: int) -> dict[str, float | None]:
    """Each 'rank' sums its contiguous, uneven share in batches of 16; the ranks' sums are added by name."""
    width = outputs.shape[1]
    per_rank = []
    for share in np.array_split(np.arange(N), ranks):
        total = spec.empty_sums(width)
        for batch in np.array_split(share, max(1, -(-len(share) // 16))):
            total = named.add(total, {LOSS: np.float64(0.0), COUNT: np.float64(len(batch)),
                                      **spec.batch_sums(outputs[batch], targets[batch])})
        per_rank.append(total)
    combined = named.allreduce(lambda flat: flat, per_rank[0])
    for other in per_rank[1:]:
        combined = named.add(combined, other)
    return spec.values(named.from_plain(named.to_plain(combined)))  # through a checkpoint's JSON, too


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_builtin_metric_equals_scikit_learn_over_the_whole_set(task: str, ranks: int) -> None:
    outputs, targets = _data(task)
    names = {"classification": ["accuracy", "top5_accuracy"], "regression": ["mae", "rmse", "r2"],
             "multilabel": ["f1_micro", "f1_macro", "exact_match"]}[task]
    values = _sharded_values(resolve_task(task, None, tuple(names)), outputs, targets, ranks)
    for name in names:
        assert values[name] == pytest.approx(_reference(name, outputs, targets), abs=1e-6), name


def test_a_rank_without_samples_adds_nothing() -> None:
    spec = resolve_task("multilabel", None, None)
    outputs, targets = _data("multilabel")
    full = named.add(spec.empty_sums(6), {LOSS: np.float64(3.0), COUNT: np.float64(N),
                                          **spec.batch_sums(outputs, targets)})
    assert spec.values(named.add(full, spec.empty_sums(6))) == spec.values(full)
    assert spec.values(spec.empty_sums(6)) == {"loss": None, "f1_micro": None, "f1_macro": None, "exact_match": None}


@pytest.mark.parametrize("task, loss, metrics, fragment", [
    ("regression", None, ("accuracy",), "train.metrics: 'accuracy' does not fit task=regression"),
    ("classification", "bce", None, "train.loss: 'bce' does not fit task=classification"),
    ("multilabel", None, ("f2",), "'f2' is not a built-in metric of task=multilabel"),
    ("ranking", None, None, "task: 'ranking' is not a task"),
    ("regression", None, ("mae", "mae"), "repeats a name"),
])
def test_what_does_not_fit_the_task_is_refused_in_one_line(task: str, loss: str | None,
                                                           metrics: tuple[str, ...] | None, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")) as info:
        resolve_task(task, loss, metrics)
    assert "\n" not in str(info.value)


def test_metric_fields_follow_the_task_and_direction_comes_from_the_metric() -> None:
    spec = resolve_task("regression", None, None)
    check_metric_field(spec.metric_names(), "checkpoint.best_metric", "val_r2")
    with pytest.raises(ConfigError, match="did you mean 'val_rmse'"):
        check_metric_field(spec.metric_names(), "checkpoint.best_metric", "val_rmsе")  # a Cyrillic e
    assert spec.lower_is_better("val_rmse") and not spec.lower_is_better("val_r2")
    assert spec.lower_is_better("train_loss") and not spec.lower_is_better("samples_per_s")


def test_user_metrics_sum_exactly_and_declare_their_direction(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_metrics.py").write_text('''
import numpy as np

def abs_error(outputs, targets):
    return np.abs(outputs - targets).mean(axis=1)
abs_error.lower_is_better = True

class Precision:
    def batch_sums(self, outputs, targets):
        predicted = outputs > 0
        return {"tp": (predicted & (targets > 0.5)).sum(), "predicted": predicted.sum()}
    def value(self, totals, count):
        return totals["tp"] / totals["predicted"]
precision = Precision()

def scalar(outputs, targets):
    return 1.0
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    outputs, targets = _data("regression")
    spec = resolve_task("regression", None, ("my_metrics:abs_error", "r2"))
    assert spec.metric_names() == ("abs_error", "r2") and spec.lower_is_better("val_abs_error")
    values = _sharded_values(spec, outputs, targets, 3)
    assert values["abs_error"] == pytest.approx(sklearn_metrics.mean_absolute_error(
        targets.astype(np.float64), outputs.astype(np.float64)), abs=1e-6)
    outputs, targets = _data("multilabel")
    spec = resolve_task("multilabel", None, ("my_metrics:precision",))
    values = _sharded_values(spec, outputs, targets, 2)
    assert not spec.lower_is_better("val_precision")
    assert values["precision"] == pytest.approx(sklearn_metrics.precision_score(
        targets.astype(int), (outputs > 0).astype(int), average="micro"), abs=1e-6)
    with pytest.raises(ConfigError, match=r"entry 'scalar' returned shape \[\] for a batch of 257: return one"):
        resolve_task("multilabel", None, ("my_metrics:scalar",)).batch_sums(outputs, targets)

"""Sends what a run directory holds beyond what its tracking.json says was sent (hvdtrain/tracking/__init__.py).

`TrackingState` is tracking.json: the MLflow store, the run's id, whether its parameters went, the last epoch and
step whose metrics went, and whether the run was closed. `send_pending` brings the tracker run up to the run
directory; it may fail part-way (the server went away): what went is recorded, and the next call goes on from
there.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hvdtrain.config import Config, flatten, to_dict
from hvdtrain.files import write_atomic

STATE_FILE = "tracking.json"
ARTIFACTS = ("config.yaml", "summary.json", "eval.json")  # and every *.png in run.dir (plots)
MODEL_FILES = ("model.pt", "model.keras")
PARAM_VALUE_LIMIT = 6000  # characters MLflow keeps of a parameter's value
BATCH = 500  # metrics per request (MLflow takes 1,000)


@dataclass
class TrackingState:
    """tracking.json."""

    mlflow_uri: str
    run_id: str | None = None
    experiment_id: str | None = None
    params_sent: bool = False
    sent_epochs: int = 0  # metrics.jsonl rows sent (epochs 1..sent_epochs)
    sent_step: int = 0  # steps.jsonl rows sent (steps up to this one)
    finished: bool = False

    @classmethod
    def read(cls, run_dir: Path) -> TrackingState | None:
        path = run_dir / STATE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / STATE_FILE, json.dumps(asdict(self), indent=1) + "\n")


def one_line(error: BaseException) -> str:
    """A tracker's error as a short phrase for a one-line message."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:160] + ("..." if len(first) > 160 else "")


def experiment_name(cfg: Config) -> str:
    return cfg.tracking.experiment or f"{cfg.data.name}-{cfg.model.name}"


def client(cfg: Config, uri: str) -> Any:
    """An MLflow client whose requests give up after tracking.timeout_s, without retries (a tracker never
    holds training up for long). Imports MLflow: rank 0, tracking on, only."""
    for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(cfg.tracking.timeout_s)))),
                        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")):
        os.environ.setdefault(name, value)  # read by MLflow when a request is made
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store's table creation on rank 0's console
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


def rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def numbers(row: dict[str, Any], skip: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def params_of(cfg: Config) -> dict[str, str]:
    """The resolved config as flat parameters (policy.precision: bf16)."""
    return {key: str(value)[:PARAM_VALUE_LIMIT] for key, value in flatten(to_dict(cfg)).items()}


def send_pending(run_dir: Path, cfg: Config, state: TrackingState, mlflow: Any, *, final: bool = False) -> None:
    """Sends run_dir's parameters (`cfg`: its config.yaml), metrics and (with `final`) artifacts that `state` does
    not list as sent, and records each part in tracking.json as soon as it went."""
    from mlflow.entities import Metric, Param

    if state.run_id is None:
        experiment = mlflow.get_experiment_by_name(experiment_name(cfg))
        state.experiment_id = (experiment.experiment_id if experiment is not None
                               else mlflow.create_experiment(experiment_name(cfg)))
        tags = {**cfg.tracking.tag_map(), "hvdtrain.run_dir": str(run_dir.resolve())}
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = mlflow.create_run(state.experiment_id, run_name=cfg.tracking.run_name or run_dir.name, tags=tags)
        state.run_id = run.info.run_id
        state.write(run_dir)
    run_id = state.run_id
    if not state.params_sent:
        params = [Param(k, v) for k, v in params_of(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 parameters a request
            mlflow.log_batch(run_id, params=params[i:i + 100])
        state.params_sent = True
        state.write(run_dir)
    epochs = [row for row in rows(run_dir / "metrics.jsonl") if row["epoch"] > state.sent_epochs]
    steps = [row for row in rows(run_dir / "steps.jsonl") if row["step"] > state.sent_step]
    metrics = [Metric(key, value, 0, int(row.get("step", row["epoch"])))
               for row in epochs for key, value in numbers(row, ("epoch", "step")).items()]
    metrics += [Metric(f"step/{key}", value, 0, int(row["step"]))
                for row in steps for key, value in numbers(row, ("epoch", "step")).items()]
    for i in range(0, len(metrics), BATCH):
        mlflow.log_batch(run_id, metrics=metrics[i:i + BATCH])
    if epochs or steps:
        state.sent_epochs = max([state.sent_epochs, *(row["epoch"] for row in epochs)])
        state.sent_step = max([state.sent_step, *(row["step"] for row in steps)])
        state.write(run_dir)
    if final and not state.finished:
        summary = json.loads((run_dir / "summary.json").read_text())
        mlflow.set_tag(run_id, "hvdtrain.system", json.dumps(system_facts(summary)))
        for key, value in system_facts(summary).items():
            mlflow.set_tag(run_id, f"system.{key}", str(value))
        files = [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]
        files += sorted(run_dir.glob("*.png"))
        if cfg.tracking.log_model:
            files += [run_dir / name for name in MODEL_FILES if (run_dir / name).is_file()]
        for path in dict.fromkeys(files):
            mlflow.log_artifact(run_id, str(path))
        mlflow.set_terminated(run_id, "FINISHED")
        state.finished = True
        state.write(run_dir)


def send_evaluation(run_dir: Path, cfg: Config, files: list[Path], metrics: dict[str, Any]) -> str | None:
    """`evaluate`'s files (eval.json, its plot) as artifacts of the run's MLflow run and its metrics as eval/*,
    at the run's last step; a warning line if that failed (None: sent, or the run is not tracked by MLflow)."""
    state = TrackingState.read(run_dir)
    if not cfg.tracking.mlflow_uri or state is None or state.run_id is None:
        return None
    try:
        from mlflow.entities import Metric

        mlflow = client(cfg, state.mlflow_uri)
        for path in files:
            mlflow.log_artifact(state.run_id, str(path))
        step = max([0, *(row.get("step", 0) for row in rows(run_dir / "metrics.jsonl"))])
        now = int(time.time() * 1000)
        mlflow.log_batch(state.run_id, metrics=[Metric(f"eval/{key}", value, now, step)
                                                for key, value in numbers(metrics, ()).items()])
    except Exception as error:  # noqa: BLE001  # a tracker never fails a command that did its work
        return (f"warning: tracking: sending the evaluation to MLflow at {state.mlflow_uri} failed "
                f"({one_line(error)}); {', '.join(p.name for p in files)} stay in {run_dir}")
    return None


PARENT_RUN_ENV = "HVDTRAIN_TRACKING_PARENT"  # a sweep's parent run: its trials become nested runs
GROUP_ENV = "HVDTRAIN_TRACKING_GROUP"  # a sweep's name: its trials' W&B runs form one group


def system_facts(summary: dict[str, Any]) -> dict[str, Any]:
    """What ran the run: backend and versions, world size, Horovod's controller, hosts."""
    return {key: summary.get(key) for key in ("backend", "framework_version", "hvdtrain_version", "world_size",
                                              "controller", "device", "elastic", "hosts") if key in summary}

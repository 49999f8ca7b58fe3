"""A sweep's parent run: the sweep command opens one MLflow run for the whole sweep and hands its id to the
trials (HVDTRAIN_TRACKING_PARENT), whose own runs become its children (MLflow's nested runs). With W&B, the
trials' runs form one group named after the sweep's folder (HVDTRAIN_TRACKING_GROUP): W&B's way of grouping.
Like every tracker call, a failure costs one warning and the sweep goes on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hvdtrain.config import Config
from hvdtrain.tracking.sync import GROUP_ENV, PARENT_RUN_ENV, client, experiment_name, one_line


class SweepParent:
    """Opened by `open`, closed by `close`; `run_id` is None when tracking is off or the tracker failed."""

    def __init__(self, cfg: Config, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.uri = cfg.tracking.mlflow_uri
        self.run_id: str | None = None
        self._client: Any = None

    def open(self, trials: int) -> None:
        if self.cfg.tracking.wandb_project:
            os.environ[GROUP_ENV] = f"sweep-{self.out.name}"  # the trials' processes inherit it
        if not self.uri:
            return
        try:
            self._client = client(self.cfg, self.uri)
            found = self._client.get_experiment_by_name(experiment_name(self.cfg))
            experiment = found.experiment_id if found else self._client.create_experiment(experiment_name(self.cfg))
            run = self._client.create_run(experiment, run_name=f"sweep {self.out.name}",
                                          tags={**self.cfg.tracking.tag_map(), "hvdtrain.sweep": str(self.out)})
            self.run_id = run.info.run_id
            self._client.log_param(self.run_id, "trials", str(trials))
            os.environ[PARENT_RUN_ENV] = self.run_id  # the trials' processes inherit it
        except Exception as error:  # noqa: BLE001  # a tracker never stops the sweep
            print(f"warning: tracking: MLflow at {self.uri} failed ({one_line(error)}); the sweep goes on without "
                  "a parent run (each trial still tracks itself)", flush=True)

    def close(self, best: dict[str, float], failed: bool) -> None:
        """The best trial's metric on the parent, and the parent finished (or failed: no trial succeeded)."""
        os.environ.pop(GROUP_ENV, None)
        if self.run_id is None:
            return
        os.environ.pop(PARENT_RUN_ENV, None)
        try:
            for key, value in best.items():
                self._client.log_metric(self.run_id, f"best_{key}", value)
            self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        except Exception as error:  # noqa: BLE001
            print(f"warning: tracking: closing the sweep's parent run failed ({one_line(error)})", flush=True)

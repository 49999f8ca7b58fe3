"""Callbacks that inject faults into real runs (tests only), configured by environment variables so that
horovodrun passes them to every worker, respawned ones included.

    HVDTRAIN_TEST_KILL_RANK / _STEP / _MARKER   SIGKILL that rank at that step, once (the marker file
                                                remembers it across respawns and holds the killed pid)
    HVDTRAIN_TEST_STEP_SLEEP                    seconds to sleep after every step (stretches a run)
    HVDTRAIN_TEST_STALL_RANK / _EPOCH           that rank sleeps for an hour after that epoch (a stall)
    HVDTRAIN_TEST_STOP_RANK / _EPOCH            that rank alone asks to stop after that epoch
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import Callback, CallbackContext
from hvdtrain.config import Config


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


class Faults(Callback):
    def __init__(self, cfg: Config) -> None:
        self.kill_rank, self.kill_step = _env_int("HVDTRAIN_TEST_KILL_RANK"), _env_int("HVDTRAIN_TEST_KILL_STEP")
        marker = os.environ.get("HVDTRAIN_TEST_KILL_MARKER")
        self.marker = Path(marker) if marker else None
        self.sleep = float(os.environ.get("HVDTRAIN_TEST_STEP_SLEEP", "0"))
        self.stall_rank, self.stall_epoch = _env_int("HVDTRAIN_TEST_STALL_RANK"), _env_int("HVDTRAIN_TEST_STALL_EPOCH")
        self.stop_rank, self.stop_epoch = _env_int("HVDTRAIN_TEST_STOP_RANK"), _env_int("HVDTRAIN_TEST_STOP_EPOCH")

    def on_step_end(self, ctx: CallbackContext, step: int, loss: float) -> None:
        if self.sleep:
            time.sleep(self.sleep)
        if (ctx.rank == self.kill_rank and self.kill_step is not None and step >= self.kill_step
                and self.marker is not None and not self.marker.exists()):
            self.marker.write_text(f"{os.getpid()} {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> bool:
        if ctx.rank == self.stall_rank and record["epoch"] == self.stall_epoch:
            time.sleep(3600)
        return ctx.rank == self.stop_rank and record["epoch"] >= (self.stop_epoch or 0)

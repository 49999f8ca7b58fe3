"""A callback for the tracking tests: records which packages each rank imported, and can stop a tracking server
mid-run.

    HVDTRAIN_TEST_PROBE_DIR      each rank writes rank<N>.json there at the end: {package: imported?}
    HVDTRAIN_TEST_SERVER_PID     rank 0 sends SIGTERM to this process group after the epoch
                                 HVDTRAIN_TEST_SERVER_EPOCH, and waits until HVDTRAIN_TEST_SERVER_PORT refuses
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import Callback, CallbackContext
from hvdtrain.config import Config

PACKAGES = ("mlflow", "wandb", "torch", "tensorflow")


class TrackingProbe(Callback):
    def __init__(self, cfg: Config) -> None:
        self.server_pid = int(os.environ.get("HVDTRAIN_TEST_SERVER_PID", "0"))
        self.server_epoch = int(os.environ.get("HVDTRAIN_TEST_SERVER_EPOCH", "0"))
        self.server_port = int(os.environ.get("HVDTRAIN_TEST_SERVER_PORT", "0"))

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        if ctx.rank == 0 and self.server_pid and record["epoch"] == self.server_epoch:
            os.killpg(self.server_pid, signal.SIGTERM)  # the server and its workers
            while True:  # gone before the tracker sends this epoch (its processes stay zombies until reaped)
                try:
                    socket.create_connection(("127.0.0.1", self.server_port), timeout=1).close()
                except OSError:
                    break
                time.sleep(0.05)

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        folder = os.environ.get("HVDTRAIN_TEST_PROBE_DIR")
        if folder:
            Path(folder, f"rank{ctx.rank}.json").write_text(json.dumps({p: p in sys.modules for p in PACKAGES}))

"""Weights & Biases offline runs read back with wandb's own file reader (its DataStore and Record protobuf): what
a run directory's run.dir/wandb/offline-run-*/run-*.wandb files hold."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    run_id: str
    project: str
    name: str
    group: str
    config: dict[str, Any]  # key -> value, without W&B's own _wandb
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged row, _step among its keys
    files: set[str] = field(default_factory=set)  # under the run's files folder, relative to it


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline run under run_dir/wandb, oldest first (a resumed run writes a second one, same id)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    found = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        store = datastore.DataStore()
        store.open_for_scan(str(log))
        run: OfflineRun | None = None
        history = []
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update
                          if item.key != "_wandb"}  # W&B's own entry
                run = OfflineRun(record.run.run_id, record.run.project, record.run.display_name,
                                 record.run.run_group, config)
            elif kind == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        assert run is not None, f"{log} holds no run record"
        run.history = history
        run.files = {str(p.relative_to(folder / "files")) for p in (folder / "files").rglob("*") if p.is_file()}
        found.append(run)
    return found

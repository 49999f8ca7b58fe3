"""Prints the scalars of a directory's TensorBoard event files as JSON lines {step, tag, value}, read with
TensorFlow's own reader (which checks the record checksums). Tests only: run it in its own process."""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

files = sorted(glob.glob(os.path.join(sys.argv[1], "events.out.tfevents.*")))
print(json.dumps({"files": len(files)}))
for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
        if event.file_version:
            print(json.dumps({"file_version": event.file_version}))
        for value in event.summary.value:
            print(json.dumps({"step": event.step, "tag": value.tag, "value": value.simple_value}))

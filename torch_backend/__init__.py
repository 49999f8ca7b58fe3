"""The PyTorch backend. Importing this package imports PyTorch once per process (hvdtrain/frameworks.py: without
the garbage collector walking its objects)."""

from __future__ import annotations

from hvdtrain.frameworks import import_framework

import_framework("torch")

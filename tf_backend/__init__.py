"""The TensorFlow/Keras backend. Importing this package imports TensorFlow, once per process, without the
optional packages that Keras and TensorFlow's bundled Keras 2 load at import for features hvdtrain never uses."""

from __future__ import annotations

import os
import sys

from hvdtrain.frameworks import import_framework

# Keras imports scikit-learn (for its scikit-learn wrappers), matplotlib (for an image-gallery helper) and pandas
# (to accept DataFrames in its own fit(), which hvdtrain never calls; pandas is installed as MLflow's dependency),
# and TensorFlow's legacy Keras imports scipy.sparse, each only if installed and each inside `try: ... except
# ImportError`. They cost about 1.5 CPU-s (pandas: 0.9 s more) of the 4.3 s that `import tensorflow,
# horovod.tensorflow` takes in every rank (measured on a 2-core AMD EPYC). Marking them missing while TensorFlow
# imports makes those helpers fall back; the packages are importable again afterwards (hvdtrain's plots, MLflow
# and users' code import them as usual).
_OPTIONAL_AT_TF_IMPORT = ("sklearn", "matplotlib", "scipy", "pandas")


def _import_tensorflow_lean() -> None:
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up banner out of the logs
    hidden = [name for name in _OPTIONAL_AT_TF_IMPORT if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import_framework("keras", "tensorflow")
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


_import_tensorflow_lean()

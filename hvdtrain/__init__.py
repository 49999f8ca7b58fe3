"""hvdtrain: one Horovod data-parallel trainer for PyTorch and TensorFlow/Keras 3.

This package is framework-neutral: it imports neither torch nor TensorFlow; the backend chosen by the
config's `backend` key is imported lazily (hvdtrain.backend.get_backend).
"""

__version__ = "0.1.0"


from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hvdtrain.api import train as train


def __getattr__(name: str) -> Any:
    # hvdtrain.train (hvdtrain/api.py) is imported on first use: `import hvdtrain` stays light.
    if name == "train":
        from hvdtrain.api import train

        return train
    raise AttributeError(f"module 'hvdtrain' has no attribute {name!r}")

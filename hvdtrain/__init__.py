"""hvdtrain: one Horovod data-parallel trainer for PyTorch and TensorFlow/Keras 3.

This package is framework-neutral: it imports neither torch nor TensorFlow; the backend chosen by the
config's `backend` key is imported lazily (hvdtrain.backend.get_backend).
"""

__version__ = "0.1.0"

"""ImageDataGenerator-style augmentation: parameter sampling (numpy, seeded per rank and epoch), the
batch kernel written once for numpy/torch/TensorFlow arrays, and standardisation."""

from hvdtrain.augment.sampling import epoch_rng, sample_transforms

__all__ = ["epoch_rng", "sample_transforms"]

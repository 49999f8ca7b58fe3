"""Datasets as map-style sources (in memory or streamed from disk), per-rank sharding, and the batch loader
(a background thread or data worker processes). Framework-neutral: numpy and Pillow only."""

from hvdtrain.data.datasets import load_dataset
from hvdtrain.data.loader import BatchLoader
from hvdtrain.data.sharding import ShardPlan, epoch_order, plan_epoch, shard_for_eval
from hvdtrain.data.source import ArraySource, Dataset, SampleError, Source, read_all

__all__ = ["ArraySource", "BatchLoader", "Dataset", "SampleError", "ShardPlan", "Source", "epoch_order",
           "load_dataset", "plan_epoch", "read_all", "shard_for_eval"]

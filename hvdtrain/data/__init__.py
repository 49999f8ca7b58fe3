"""Datasets, per-rank sharding and the background batch loader (framework-neutral, numpy only)."""

from hvdtrain.data.loader import BatchLoader
from hvdtrain.data.sharding import ShardPlan, epoch_order, plan_epoch, shard_for_eval
from hvdtrain.data.sources import Dataset, load_dataset

__all__ = ["BatchLoader", "Dataset", "ShardPlan", "epoch_order", "load_dataset", "plan_epoch",
           "shard_for_eval"]

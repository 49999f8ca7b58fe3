"""The training loop and what it keeps: policy, LR schedule, state, checkpoints, elastic training."""

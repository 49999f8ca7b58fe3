"""What a run reports: the run directory's files, progress lines, TensorBoard events, the step profile."""

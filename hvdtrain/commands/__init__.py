"""The CLI's commands other than train: bench, sweep, plot, augment-preview, doctor."""

"""Training: the fit loop, callbacks, optimizers and schedules, checkpoints, presets."""

"""The training engine: config, schedules, losses, checkpoints and the loop."""

"""Tracking: training loggers (loggers), wandb runs of the aggregator and the comparison (wandb), progress bars
(progress)."""

"""Training: each epoch's order and augmentation (epochs), learning-rate schedules (schedules), the Lightning
module of P packed members (module), the Trainer and its logger (trainer), one job → one record per seed (job)."""

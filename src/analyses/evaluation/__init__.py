"""Built-in evaluation of a sweep's scores: planted-noise AUROC (noise), the linear datamodeling score (lds),
LiRA membership inference (mia), on runs split by seed into fit and held-out runs (split); evaluate.py runs them."""

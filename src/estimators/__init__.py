"""Estimators: the interface and registry (base, registry), the record scores accumulated inside training
(proxies), F&Z's subsampled estimator (subsample/) and turn-over dropout (turnover/)."""

"""Feldman & Zhang's subsampled estimator (Algorithm 1): see estimator.py for the map of its modules."""

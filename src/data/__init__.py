"""Data: raw sources (src/data/sources.py, image folders in src/data/folders.py), label noise and fingerprints
(src/data/dataset.py), and the seed -> subset draw (src/data/subsets.py). numpy only at import."""

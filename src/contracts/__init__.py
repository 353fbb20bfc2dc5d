"""The boundaries between the stages: what a training job writes (records), what an estimator writes
(estimates), what identifies an experiment, and how every file is written (atomically). Each contract has
one writer and one validated reader; nothing else knows a file's layout."""

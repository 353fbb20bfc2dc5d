"""Analyses of estimates: cross-experiment agreement (compare), removal experiments (removal, removal_table), the
last layer alone (lastlayer), memorization over epochs (dynamics), C-scores (cscore), and the built-in
evaluation (evaluation/: noise AUROC, LDS, membership inference)."""

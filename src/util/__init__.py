"""Helpers with no knowledge of the pipeline: statistics, tables, plots, command-line plumbing."""

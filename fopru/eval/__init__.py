"""Evaluation: the Lightning loop over a benchmark, per-sample records, efficiency and per-job results."""

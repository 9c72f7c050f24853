"""Evaluation: verification metrics, bootstrap intervals, retrieval, one-shot episodes and
runs, plots."""

"""Pair and triplet mining: offline (fixed pair sets) and online (inside a batch)."""

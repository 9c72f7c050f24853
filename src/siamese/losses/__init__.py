"""Distances, online miners and losses, kept apart so they compose (as in
pytorch-metric-learning): a loss asks a miner for index tuples over a distance matrix."""

"""The model registry side: the served pyfunc and its package, the tracking client, aliases,
galleries."""

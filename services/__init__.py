"""Corral's runnable parts: nameko services, the worker, the pool and the command line."""

"""Benchmarks of tickcast (`tickcast bench ...`). Not part of the served package."""

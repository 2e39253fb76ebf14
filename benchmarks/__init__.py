"""Measured speed and accuracy tables for cape-track (`python -m cape_track.benchmarks.fps`, `... .pck`).

Nothing imports this package; it sits above `tracker/`, `training/` and `model/` and measures them.
"""

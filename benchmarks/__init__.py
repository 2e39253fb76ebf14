"""Measured speed and accuracy tables for cape-track (`python -m benchmarks.fps`, `python -m benchmarks.pck`).

Nothing imports this package; it sits above `tracker/`, `training/` and `model/` and measures them.
"""

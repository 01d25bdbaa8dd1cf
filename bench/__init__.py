"""Benchmarks: how fast the product is, measured against floors taken in the same run.

`python -m bench` runs every figure at full size; `python -m bench --quick`
runs them at tiny sizes so CI keeps the harness alive (no thresholds there).
Both print a table and write `bench/results.json` and `bench/RESULTS.md`.
Speed is measured here and never asserted in the test suite: these machines
are noisy, so every figure is the median of at least three runs, and every
speed figure also carries a ratio against a floor (the cheapest hand-written
version of the same work) measured in the same run.
"""

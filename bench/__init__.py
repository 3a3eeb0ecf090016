"""Benchmarks: the modelset pipeline against a hand-written script (issue 5).

See docs/performance.md for the method and the figures.
"""

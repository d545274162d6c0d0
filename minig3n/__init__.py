"""minig3n: a NumPy-only reference implementation of Google's Gemma 3n (E2B/E4B).

One flat module per concept; see README.md for the map. Shape-comment legend: ``minig3n/config.py``.
"""
__version__ = "0.1.0"

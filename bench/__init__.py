"""Lathe's benchmark harness: every Lathe number next to its raw building block.

Run with ``make bench`` or ``python -m bench``; see ``bench/__main__.py`` for the
options and ``bench/families.py`` for adding a benchmark family.
"""

"""Machinery behind runner.py: get upstream sources, run a pack's reproducer on clean and patched
copies, and turn what it measured into one verdict per pack."""

__version__ = "0.1.0"

"""Helpers shared by test modules (a test module never imports another test module:
tests/project/test_layout.py checks it)."""

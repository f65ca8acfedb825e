"""Compatibility package: the original program's ``utils.diff`` so users' factor files import unchanged."""

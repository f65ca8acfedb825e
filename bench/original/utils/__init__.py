"""The original program's ``utils`` package (only ``diff`` is used by factor files)."""

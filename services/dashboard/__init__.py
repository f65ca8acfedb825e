"""The dashboard: one page over a work directory (``alphabus dashboard``)."""

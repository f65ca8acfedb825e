"""alphabus: hourly market-neutral crypto coin selection as four ZeroMQ services."""

__version__ = "0.1.0"

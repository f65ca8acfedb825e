"""Market service: owns the clock, watches the crawler's directory, publishes rounds and candles."""

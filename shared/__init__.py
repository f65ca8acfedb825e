"""Code every alphabus service imports: config, messages, bus, BMAC reading, time, the pure core."""

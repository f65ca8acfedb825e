"""Factor service: computes the configured factor and filters for the symbols of its shard."""

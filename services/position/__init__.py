"""Position service: gathers a round's factor rows, filters, ranks, sizes and publishes the selection."""

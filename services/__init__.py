"""The four alphabus services, one package each: market, factor, position, recorder."""

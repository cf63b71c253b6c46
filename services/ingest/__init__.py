"""ingest: pulls candles from a source, stores them once, publishes CandleClosed once."""

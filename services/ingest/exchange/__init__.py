"""Exchange access for ingest: the Bitvavo REST client and a simulated Bitvavo server."""

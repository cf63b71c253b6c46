"""The four tradeloop services: ingest, trainer, registry, inference."""

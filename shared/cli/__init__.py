"""The ``tradeloop`` command line: publish commands, inspect the registry, run the demo."""

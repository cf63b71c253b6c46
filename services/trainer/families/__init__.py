"""Model families the trainer can build: one module per family."""

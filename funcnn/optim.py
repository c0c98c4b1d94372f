"""funcnn.optim (being written)."""

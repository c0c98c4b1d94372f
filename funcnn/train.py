"""funcnn.train (being written)."""

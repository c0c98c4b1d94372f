"""funcnn.losses (being written)."""

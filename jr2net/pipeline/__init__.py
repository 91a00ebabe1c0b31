"""jr2net.pipeline."""

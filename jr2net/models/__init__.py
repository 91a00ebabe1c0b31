"""jr2net.models."""

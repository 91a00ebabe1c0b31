"""jr2net.io."""

"""jr2net.face."""

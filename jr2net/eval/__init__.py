"""jr2net.eval."""

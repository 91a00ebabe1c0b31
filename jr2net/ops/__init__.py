"""jr2net.ops."""

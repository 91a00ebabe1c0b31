"""jr2net.server: the gRPC reenactment server."""

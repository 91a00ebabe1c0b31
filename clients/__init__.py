"""jr2net.clients: Python client library, CLIs and load generator."""

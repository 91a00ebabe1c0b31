"""jr2net.server: the gRPC streaming reenactment server (see server/README.md).

- ``jr2net.server.app``: ``ReenactmentServer`` (start / drain / stop), ``serve`` (until SIGTERM),
  ``ServerThread`` (a server on its own loop in a thread).
- ``jr2net.server.config``: ``ServerConfig``, ``load_config`` (flags > env > YAML > defaults),
  ``ReenactorFactory``.
- ``jr2net.server.protocol``: the generated ``pb2`` / ``pb2_grpc`` modules.
"""

"""jr2net.server: the gRPC streaming reenactment server (see server/README.md).

- ``jr2net.server.app``: ``ReenactmentServer`` (start / drain / stop), ``serve`` (until SIGTERM),
  ``ServerThread`` (a server on its own loop in a thread).
- ``jr2net.server.child``: ``ServerProcess``, a ``jr2net serve`` child on a loopback port (the
  local server of ``jr2net reenact``), stopped on every exit path.
- ``jr2net.server.config``: ``ServerConfig``, ``load_config`` (flags > env > YAML > defaults),
  ``ReenactorFactory``.

The protocol (generated messages, enum tables, image codecs) is ``jr2net.protocol``.
"""

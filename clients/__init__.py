"""jr2net.clients: the Python client library, `jr2net reenact` and the load generator.

- ``jr2net.clients.client``: ``AsyncReenactClient`` (grpc.aio), ``ReenactClient`` (blocking),
  ``session_config``, ``make_frame``, ``StreamResult``.
- ``jr2net.clients.reenact``: ``reenact_video`` (driving video + source photo -> mp4, side-by-side,
  contact sheet), through a given server.
- ``jr2net.clients.loadgen``: ``run_load`` (N streams x M frames at F fps; latency statistics).

The clients speak only ``jr2net.protocol`` and never import ``jr2net.server`` (nor torch): the
commands that run without a server address start one, ``jr2net reenact`` as a child process
(``jr2net.server.child.ServerProcess``), ``demo`` and ``bench server`` with
``jr2net.server.app.local_server``.
"""

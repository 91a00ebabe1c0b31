"""jr2net.clients: the Python client library, `jr2net reenact` and the load generator.

- ``jr2net.clients.client``: ``AsyncReenactClient`` (grpc.aio), ``ReenactClient`` (blocking),
  ``session_config``, ``make_frame``, ``StreamResult``.
- ``jr2net.clients.reenact``: ``reenact_video`` (driving video + source photo -> mp4, side-by-side,
  contact sheet), through a given server or one started in-process.
- ``jr2net.clients.loadgen``: ``run_load`` (N streams x M frames at F fps; latency statistics).
"""

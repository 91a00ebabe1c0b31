"""The generated protobuf / gRPC modules of ``proto/jr2net.proto``.

They are a build output (``jr2net/protocol/_generated/``, made by ``setup.py build_proto``, which
every install and ``make build`` run), never written at import time.
"""

from __future__ import annotations

_GENERATED = f"{__package__}._generated"

try:
    from jr2net.protocol._generated import jr2net_pb2 as pb2
    from jr2net.protocol._generated import jr2net_pb2_grpc as pb2_grpc
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith(_GENERATED):
        raise
    raise ImportError(
        f"{_GENERATED} is missing: the gRPC modules are generated from proto/jr2net.proto at build "
        "time. Run `make build` in a checkout (or `python setup.py build_proto`), or reinstall "
        "the package (`pip install --no-build-isolation -e .`)."
    ) from exc

SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["Reenactment"].full_name

__all__ = ["SERVICE_NAME", "pb2", "pb2_grpc"]

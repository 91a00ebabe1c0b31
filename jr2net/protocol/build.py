"""Generate the gRPC Python modules from ``proto/jr2net.proto`` (a build step, not run at import).

``setup.py`` runs :func:`generate` from its ``build_proto`` command, which ``build_py`` (so every
install, editable included) and ``build_ext`` (``make build``) run first. The output,
``jr2net/protocol/_generated/``, is gitignored. This module imports nothing from ``jr2net``, so
``setup.py`` can load it by path before the package is importable; it needs ``grpcio-tools``
(a build requirement only).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

PROTO_NAME = "jr2net.proto"
OUTPUTS = ("jr2net_pb2.py", "jr2net_pb2_grpc.py", "__init__.py")


def is_stale(out_dir: Path, proto: Path) -> bool:
    """True when a generated file is missing or older than the ``.proto``."""
    files = [out_dir / name for name in OUTPUTS]
    if not all(p.is_file() for p in files):
        return True
    return min(p.stat().st_mtime for p in files) < proto.stat().st_mtime


def generate(proto: Path, out_dir: Path, force: bool = False) -> bool:
    """Run ``grpc_tools.protoc`` on ``proto`` into ``out_dir`` unless it is up to date.

    Files are written to a temporary folder and moved in, ``__init__.py`` last, so an interrupted
    run leaves the folder stale (regenerated next time), never half-written. Returns True when it
    generated. FileNotFoundError without the ``.proto``; RuntimeError when protoc fails.
    """
    proto, out_dir = Path(proto).resolve(), Path(out_dir)
    if not proto.is_file():
        raise FileNotFoundError(f"{proto} not found: cannot generate the gRPC modules")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force and not is_stale(out_dir, proto):
        return False
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".protoc-") as tmp:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto),
        ])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed (exit {rc}) on {proto}")
        grpc_file = Path(tmp) / "jr2net_pb2_grpc.py"
        # protoc writes a top-level `import jr2net_pb2`; make it relative so this is a subpackage.
        text = re.sub(
            r"^import jr2net_pb2 as", "from . import jr2net_pb2 as", grpc_file.read_text(), flags=re.M
        )
        grpc_file.write_text(text)
        (Path(tmp) / "__init__.py").write_text(
            f'"""Generated from {PROTO_NAME} at build time (setup.py build_proto); do not edit."""\n'
        )
        for name in OUTPUTS:
            os.replace(Path(tmp) / name, out_dir / name)
    return True

"""The generated protobuf/gRPC modules, built from ``jr2net.proto`` on first import.

Generated code is a build output (gitignored): at import we run ``grpc_tools.protoc`` into
``server/_generated/`` when the files are missing or older than the ``.proto``. The ``.proto`` is
``<project root>/proto/jr2net.proto`` in a checkout, else the copy installed inside this package
(``jr2net/server/jr2net.proto``). Generation is serialised across processes with a file lock and
files are swapped in atomically, so racing processes never import a half-written module. When the
package folder is read-only (a system install) the code is generated under the user cache instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from jr2net.paths import PROJECT_ROOT, cache_dir

PROTO_NAME = "jr2net.proto"
_HERE = Path(__file__).resolve().parent
_PACKAGE = f"{__package__}._generated"  # jr2net.server._generated


def proto_path() -> Path:
    """The ``.proto`` source: the checkout's ``proto/`` folder, else the in-package copy."""
    for candidate in (PROJECT_ROOT / "proto" / PROTO_NAME, _HERE / PROTO_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{PROTO_NAME} not found in {PROJECT_ROOT / 'proto'} or {_HERE}; the installation is incomplete"
    )


def _is_stale(out_dir: Path, proto: Path) -> bool:
    outputs = [out_dir / "__init__.py", out_dir / "jr2net_pb2.py", out_dir / "jr2net_pb2_grpc.py"]
    if not all(p.is_file() for p in outputs):
        return True
    return min(p.stat().st_mtime for p in outputs) < proto.stat().st_mtime


def _run_protoc(proto: Path, out_dir: Path) -> None:
    """Run protoc into a temp folder beside ``out_dir`` and move the results in atomically."""
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
        (Path(tmp) / "__init__.py").write_text(f'"""Generated from {PROTO_NAME}; do not edit."""\n')
        # __init__.py last: _is_stale() checks the oldest file, so a partial swap stays stale.
        for name in ("jr2net_pb2.py", "jr2net_pb2_grpc.py", "__init__.py"):
            os.replace(Path(tmp) / name, out_dir / name)


def _writable_dir(proto: Path) -> Path:
    """``server/_generated`` if we can write there, else a per-proto-hash folder in the cache."""
    local = _HERE / "_generated"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()[:16]
    path = cache_dir() / "generated" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_generated(out_dir: Path | None = None, proto: Path | None = None) -> Path:
    """Generate the Python modules into ``out_dir`` unless they are up to date; returns the folder."""
    proto = proto or proto_path()
    out_dir = out_dir or _writable_dir(proto)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _is_stale(out_dir, proto):
        return out_dir
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_stale(out_dir, proto):  # another process may have finished while we waited
                _run_protoc(proto, out_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out_dir


def _load() -> tuple[ModuleType, ModuleType]:
    if _PACKAGE not in sys.modules:
        out_dir = ensure_generated()
        spec = importlib.util.spec_from_file_location(
            _PACKAGE, out_dir / "__init__.py", submodule_search_locations=[str(out_dir)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
        spec.loader.exec_module(package)
    return (
        importlib.import_module(f"{_PACKAGE}.jr2net_pb2"),
        importlib.import_module(f"{_PACKAGE}.jr2net_pb2_grpc"),
    )


pb2, pb2_grpc = _load()
SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["Reenactment"].full_name

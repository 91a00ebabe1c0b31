"""MediaPipe's face models (.tflite, Apache-2.0): fetched from the ``mediapipe==0.10.21`` wheel.

The wheel on PyPI is the only registry source of these files (newer wheels no longer carry them).
``fetch_mediapipe_models`` runs ``pip download --no-deps mediapipe==0.10.21`` into a temporary folder
(any platform's wheel will do: the .tflite files are the same in all of them), extracts the files
below into ``cache_dir()/models/mediapipe/``, writes their sha256 into ``MANIFEST.json`` and the
wheel's Apache-2.0 licence beside them. Nothing is committed to the project. ``ensure_mediapipe_models``
does that on first use with a one-line message, so a fresh machine (or CI) needs no manual step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from jr2net.paths import cache_dir

log = logging.getLogger("jr2net.face")

MEDIAPIPE_VERSION = "0.10.21"
LICENCE = "Apache-2.0"
# File name in the cache -> path inside the wheel.
MODEL_FILES = {
    "face_detection_short_range.tflite": "mediapipe/modules/face_detection/"
    "face_detection_short_range.tflite",
    "face_detection_full_range_sparse.tflite": "mediapipe/modules/face_detection/"
    "face_detection_full_range_sparse.tflite",
    "face_landmark.tflite": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "iris_landmark.tflite": "mediapipe/modules/iris_landmark/iris_landmark.tflite",
}
REQUIRED = ("face_detection_short_range.tflite", "face_landmark.tflite")
_LICENSE_IN_WHEEL = f"mediapipe-{MEDIAPIPE_VERSION}.dist-info/LICENSE"
# Tried in order: this interpreter's own wheel, then explicit platforms (any has the same files).
_PLATFORMS = [None, "manylinux_2_28_x86_64", "macosx_11_0_universal2", "win_amd64"]
_lock = threading.Lock()


class MediaPipeModelsError(RuntimeError):
    """The MediaPipe model files cannot be obtained (offline, pip failure, bad wheel)."""


def mediapipe_models_dir() -> Path:
    """``cache_dir()/models/mediapipe``: where the extracted .tflite files live."""
    return cache_dir() / "models" / "mediapipe"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download_wheel(dest: Path, timeout: float) -> Path:
    errors = []
    for plat in _PLATFORMS:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["-d", str(dest), f"mediapipe=={MEDIAPIPE_VERSION}"]
        if plat is not None:
            cmd += ["--only-binary=:all:", "--platform", plat, "--python-version", "3.11"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"pip download timed out after {timeout:.0f} s")
            break
        wheels = sorted(dest.glob("mediapipe-*.whl"))
        if run.returncode == 0 and wheels:
            return wheels[0]
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["unknown error"]
        errors.append(f"{plat or 'this platform'}: {tail[0]}")
    raise MediaPipeModelsError(
        f"cannot download mediapipe=={MEDIAPIPE_VERSION} with pip ({'; '.join(errors)}); offline? "
        "copy its wheel here and run `jr2net assets mediapipe --wheel FILE`"
    )


def extract_mediapipe_models(wheel: Path, out: Path | None = None) -> dict[str, str]:
    """Extract the face .tflite files and the licence from a mediapipe wheel; returns their sha256."""
    out = out or mediapipe_models_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise MediaPipeModelsError(f"{wheel} is not a readable wheel: {exc}") from exc
    shas: dict[str, str] = {}
    with zf:
        names = set(zf.namelist())
        missing = [n for n in REQUIRED if MODEL_FILES[n] not in names]
        if missing:
            raise MediaPipeModelsError(f"{wheel.name} lacks {', '.join(missing)}")
        for name, inner in MODEL_FILES.items():
            if inner not in names:
                continue
            tmp = out / (name + ".part")
            tmp.write_bytes(zf.read(inner))
            tmp.replace(out / name)
            shas[name] = _sha256(out / name)
        if _LICENSE_IN_WHEEL in names:
            (out / "LICENSE").write_bytes(zf.read(_LICENSE_IN_WHEEL))
    manifest = {
        "source": f"PyPI wheel {wheel.name} (pip download --no-deps mediapipe=={MEDIAPIPE_VERSION})",
        "licence": LICENCE,
        "sha256": shas,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return shas


def fetch_mediapipe_models(
    wheel: Path | None = None, out: Path | None = None, timeout: float = 600.0
) -> dict[str, str]:
    """Download the mediapipe wheel with pip (unless ``wheel`` is given) and extract the models."""
    if wheel is not None:
        if not Path(wheel).is_file():
            raise FileNotFoundError(f"wheel not found: {wheel}")
        return extract_mediapipe_models(Path(wheel), out)
    with tempfile.TemporaryDirectory(prefix="jr2net-mediapipe-") as tmp:
        return extract_mediapipe_models(_download_wheel(Path(tmp), timeout), out)


def ensure_mediapipe_models() -> Path:
    """The models folder, fetching the files on first use (one log line); raises when offline."""
    folder = mediapipe_models_dir()
    if all((folder / n).is_file() for n in REQUIRED):
        return folder
    with _lock:
        if not all((folder / n).is_file() for n in REQUIRED):
            print(
                f"jr2net: fetching MediaPipe face models (Apache-2.0) from the mediapipe=="
                f"{MEDIAPIPE_VERSION} wheel into {folder} …",
                file=sys.stderr,
                flush=True,
            )
            fetch_mediapipe_models(out=folder)
    return folder


def model_path(name: str) -> Path:
    """Path of one MediaPipe model file (fetched on first use)."""
    if name not in MODEL_FILES:
        raise ValueError(f"unknown MediaPipe model {name!r}; known: {', '.join(MODEL_FILES)}")
    path = ensure_mediapipe_models() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"MediaPipe model file missing: {path} (run `jr2net assets mediapipe`)"
        )
    return path

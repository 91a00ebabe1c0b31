"""jr2net.protocol: the wire protocol shared by the server and the clients.

- ``jr2net.protocol.messages``: the generated ``pb2`` / ``pb2_grpc`` modules of
  ``proto/jr2net.proto`` (a build output, see ``jr2net.protocol.build``) and ``SERVICE_NAME``.
- ``jr2net.protocol.tables``: enum <-> name maps (``IMAGE_FORMATS``, ``MODES``, ``POSE_MODES`` and
  their inverses) and the lookups that raise ValueError on unknown values.
- ``jr2net.protocol.codecs``: image <-> message in both directions (``decode_image``,
  ``image_message``, ``frame_message``, ``output_message``) and ``frame_problem``, the
  admission check of a ``Frame``.
"""

from jr2net.protocol.codecs import (
    decode_image,
    format_name,
    frame_message,
    frame_problem,
    image_message,
    output_message,
    sniff_format,
)
from jr2net.protocol.messages import SERVICE_NAME, pb2, pb2_grpc
from jr2net.protocol.tables import (
    FORMAT_NAMES,
    IMAGE_FORMATS,
    MODE_NAMES,
    MODES,
    POSE_MODE_NAMES,
    POSE_MODES,
)

__all__ = [
    "FORMAT_NAMES",
    "IMAGE_FORMATS",
    "MODES",
    "MODE_NAMES",
    "POSE_MODES",
    "POSE_MODE_NAMES",
    "SERVICE_NAME",
    "decode_image",
    "format_name",
    "frame_message",
    "frame_problem",
    "image_message",
    "output_message",
    "pb2",
    "pb2_grpc",
    "sniff_format",
]

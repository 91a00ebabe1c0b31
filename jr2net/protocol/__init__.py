"""jr2net.protocol: the wire protocol shared by the server and the clients.

- ``jr2net.protocol.messages``: the generated ``pb2`` / ``pb2_grpc`` modules of
  ``proto/jr2net.proto`` (a build output, see ``jr2net.protocol.build``) and ``SERVICE_NAME``.
- ``jr2net.protocol.tables``: enum <-> name maps (``IMAGE_FORMATS``, ``MODES``, ``POSE_MODES`` and
  their inverses) and the lookups that raise ValueError on unknown values.
- ``jr2net.protocol.codecs``: image <-> message in both directions (``decode_image``,
  ``image_message``, ``frame_message``, ``output_message``) and ``frame_problem``, the
  admission check of a ``Frame``.
- ``jr2net.protocol.mocap``: motion-capture frames, ``MocapRow`` <-> ``MocapFrame``
  (``mocap_message``, ``mocap_row``) and the one check of their values (``row_problem``,
  ``mocap_problem``, the admission check of a ``MocapFrame``).
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
from jr2net.protocol.mocap import MocapRow, mocap_message, mocap_problem, mocap_row, row_problem
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
    "MocapRow",
    "POSE_MODES",
    "POSE_MODE_NAMES",
    "SERVICE_NAME",
    "decode_image",
    "format_name",
    "frame_message",
    "frame_problem",
    "image_message",
    "mocap_message",
    "mocap_problem",
    "mocap_row",
    "output_message",
    "pb2",
    "pb2_grpc",
    "row_problem",
    "sniff_format",
]

"""Sub-commands of the ``jr2net`` CLI, one module each (discovered by ``jr2net.cli``).

A module defines ``NAME`` (the sub-command, e.g. ``"fit-video"``), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports stay inside ``run``.
"""

"""``python -m jr2net.training STAGE ...``: the ``jr2net train`` command, for torchrun.

``torchrun --nproc_per_node N -m jr2net.training recnet --config FILE --out RUN`` runs the stage
on N processes (the process group is joined from torchrun's environment).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from jr2net.commands import train

    parser = argparse.ArgumentParser(prog="python -m jr2net.training", description=train.HELP)
    train.add_arguments(parser)
    return int(train.run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())

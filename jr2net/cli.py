"""The ``jr2net`` command: one entry point whose sub-commands live in ``jr2net.commands``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def _command_modules() -> dict[str, object]:
    """Every module in ``jr2net.commands``, keyed by the sub-command name it declares."""
    import jr2net.commands as package

    modules = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        modules[module.NAME] = module
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    from jr2net import __version__

    parser = argparse.ArgumentParser(
        prog="jr2net",
        description="JR2Net: 3D-aware face reenactment and reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"jr2net {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _command_modules()
    for name, module in modules.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

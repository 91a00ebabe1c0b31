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


def _chosen_command(argv: list[str] | None, names: set[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option), if any."""
    for word in argv or ():
        if not word.startswith("-"):
            return word if word in names else None
    return None


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The parser of every sub-command; with ``argv``, only the sub-command it names gets its
    arguments (some ``add_arguments`` import heavy modules: a command should not pay for the
    others' flags before its first output)."""
    from jr2net import __version__

    parser = argparse.ArgumentParser(
        prog="jr2net",
        description="JR2Net: 3D-aware face reenactment and reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"jr2net {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _command_modules()
    chosen = _chosen_command(argv, set(modules)) if argv is not None else None
    for name, module in modules.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if chosen is None or name == chosen:
            module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

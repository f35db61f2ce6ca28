"""``batch-provider`` console entry point: a small argparse dispatcher, one subcommand per tool."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _emulator(args: argparse.Namespace) -> int:
    from batch_provider.emulator.server import config_from_args, serve

    serve(config_from_args(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch-provider", description="LLM batch provider tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    emu = sub.add_parser("emulator", help="run the local OpenAI / Anthropic batch API emulator")
    from batch_provider.emulator.server import add_arguments

    add_arguments(emu)
    emu.set_defaults(func=_emulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as exc:
        parser.error(str(exc))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

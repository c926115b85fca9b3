"""The ``corral`` command: the cluster's servers, and a client with ``ollama``'s commands.

Each client command lives in its own module and talks to ``OLLAMA_HOST`` over HTTP
(``corral.cli.client``); none needs llama.cpp or the router's extras. Failures print as
``ollama`` prints them, ``Error: <message>`` on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from corral.cli import create, keys, models, run, servers, transfer, version
from corral.cli.client import CliError


class _Parser(argparse.ArgumentParser):
    """Usage mistakes read as every other failure does, ``Error: ...`` with status 1, as with
    ``ollama`` (argparse's own way is the usage text and status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="corral", description="An Ollama-compatible LLM serving cluster.")
    top.add_argument("-v", "--version", action="store_true", help="show the client's and the server's version")
    sub = top.add_subparsers(dest="command")
    servers.add_parsers(sub)
    run.add_parsers(sub)
    transfer.add_parsers(sub)
    create.add_parsers(sub)
    models.add_parsers(sub)
    keys.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> None:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and args.command == "run" and not any(word.startswith("-") for word in extra):
        args.prompt += extra  # prompt words after a flag (`run m --verbose why`), as cobra takes them
    elif extra:
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.version:
            code = version.show()
        elif args.command is None:
            top.print_help()
            code = 0
        else:
            code = args.func(args)
    except CliError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130  # as a shell reports a command stopped by Ctrl-C
    except BrokenPipeError:  # `corral list | head`: the reader left; nothing more to say
        code = 0
    raise SystemExit(code or 0)

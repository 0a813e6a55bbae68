"""fleetctl entry point: parse, run the command, turn failures into exit statuses.

Exit status: 0 success, 1 any failure (the message says what to do), 2 usage error (bad
flag, field or command, missing argument; fleet exited 0 there), 130 interrupted.
Commands are imported only when run, and nothing here imports the daemon's libraries
(aiohttp, aetcd, grpc, dbus_fast): ``fleetctl list-units`` starts in well under 0.1 s.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TextIO

from fleetctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, FleetctlError, UsageError


def version_line() -> str:
    from fleetctl.cli import version_line as line

    return line()


def _usage_hint(command: str | None) -> str:
    return f'Run "fleetctl help {command}" for usage.' if command else 'Run "fleetctl help" for usage.'


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from fleetctl import cli
    from fleetctl.context import Context

    try:
        invocation = cli.parse(argv)
    except UsageError as exc:
        print(f"Error: {exc}", file=err)
        print(_usage_hint(exc.command), file=err)
        return EXIT_USAGE
    command = invocation.command
    if invocation.show_version and command is None:
        print(cli.version_line(), file=out)
        return EXIT_OK
    if command is None:
        out.write(cli.main_help())
        return EXIT_OK
    if invocation.show_help:
        out.write(cli.command_help(command))
        return EXIT_OK
    if command.name == "version":
        print(cli.version_line(), file=out)
        return EXIT_OK
    if command.name == "help":
        topic = invocation.args.topic
        if topic is None:
            out.write(cli.main_help())
            return EXIT_OK
        if topic not in cli.COMMANDS_BY_NAME:
            print(f'Error: unknown command "{topic}"', file=err)
            print(_usage_hint(None), file=err)
            return EXIT_USAGE
        out.write(cli.command_help(cli.COMMANDS_BY_NAME[topic]))
        return EXIT_OK
    module_name, _, function = command.handler.partition(":")
    handler = getattr(importlib.import_module(module_name), function)
    ctx = Context(invocation.config, out, err)
    try:
        return int(handler(ctx, invocation.args))
    except UsageError as exc:
        print(f"Error: {exc}", file=err)
        print(_usage_hint(exc.command or command.name), file=err)
        return EXIT_USAGE
    except FleetctlError as exc:
        from fleetctl.cmd_units import Failed

        if not isinstance(exc, Failed):
            print(f"Error: {exc}", file=err)
        return EXIT_FAILURE
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run fleetctl with ``argv`` (default: the process's arguments); returns the exit
    status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        try:
            sys.stderr.write("\n")
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (fleetctl list-units | head): exit quietly
        import os

        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

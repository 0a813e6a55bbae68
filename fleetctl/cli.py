"""The command line: parsing commands, flags and ``FLEETCTL_*`` environment variables.

The table of commands and flags is :mod:`fleetctl.commands`. Parsing is argparse (standard
library: fleetctl starts fast) with fleet's conventions
added on top, since fleet's flags came from Go's ``flag`` package:

- long flags may be written with one dash (``-endpoint=x``, ``-no-block``), as Go allows;
- boolean flags take an optional ``=value`` (``--strict-host-key-checking=false``) and
  never consume the next argument;
- every global flag can come from ``FLEETCTL_<FLAG>`` (upper case, dashes to
  underscores); the command line wins;
- global flags are accepted before or after the command.

Usage errors (unknown flag or command, missing argument, bad value) raise
:class:`~fleetctl.errors.UsageError` (exit 2) instead of exiting.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from fleetctl.commands import (  # re-exported: fleetctl.main and the tests use them from here
    COMMANDS,
    COMMANDS_BY_NAME,
    GLOBAL_FLAGS,
    Command,
    Flag,
    command_help,
    main_help,
    parse_bool,
    version_line,
)
from fleetctl.config import (
    DRIVERS,
    Config,
)
from fleetctl.errors import UsageError

# -- parsing ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, add_help=False, allow_abbrev=False, **kwargs)
        self._command = command

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message, self._command)


def _add_flag(parser: argparse.ArgumentParser, flag: Flag, suppress: bool) -> None:
    names = [f"--{flag.name}"] + ([f"-{flag.short}"] if flag.short else [])
    default = argparse.SUPPRESS if suppress else flag.default
    if flag.kind == "bool":
        parser.add_argument(*names, dest=flag.attr, action="store_true", default=default)
        parser.add_argument(
            f"--no-{flag.name}", dest=flag.attr, action="store_false", default=default, help=argparse.SUPPRESS
        )
        return
    kwargs: dict[str, Any] = {"dest": flag.attr, "default": default, "metavar": flag.metavar or flag.name.upper()}
    if flag.kind == "float" or flag.kind == "int" or flag.kind == "choice":
        kwargs["type"] = lambda text, f=flag: f.convert(text, f"--{f.name}")
    parser.add_argument(*names, **kwargs)


def _command_parser(command: Command) -> _Parser:
    parser = _Parser(prog=f"fleetctl {command.name}", command=command.name)
    parser.add_argument("-h", "--help", dest="help", action="store_true", default=False)
    for flag in command.flags:
        _add_flag(parser, flag, suppress=False)
    for flag in GLOBAL_FLAGS:
        _add_flag(parser, flag, suppress=True)
    for dest, nargs, metavar in command.positional:
        parser.add_argument(dest, nargs=nargs, metavar=metavar)  # type: ignore[arg-type]
    parser.set_defaults(**command.defaults)
    return parser


def _global_parser() -> _Parser:
    parser = _Parser(prog="fleetctl")
    parser.add_argument("-h", "--help", dest="help", action="store_true", default=False)
    parser.add_argument("--version", dest="version", action="store_true", default=False)
    for flag in GLOBAL_FLAGS:
        _add_flag(parser, flag, suppress=True)
    return parser


def _flags_by_name(flags: Sequence[Flag]) -> dict[str, Flag]:
    result = {}
    for flag in flags:
        result[flag.name] = flag
        if flag.short:
            result[flag.short] = flag
    return result


def normalise(argv: Sequence[str], flags: Mapping[str, Flag], stop_at_positional: bool = False) -> list[str]:
    """Go-style flags to argparse's: ``-name[=v]`` -> ``--name[=v]`` for long names,
    ``--bool=false`` -> ``--no-bool``; stops at ``--`` (and, for ssh, at the first
    positional argument, after which everything belongs to the remote command)."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if token == "--":
            out.append(token)
            out.extend(argv[index:])
            break
        if not token.startswith("-") or token == "-":
            out.append(token)
            if stop_at_positional:
                out.extend(argv[index:])
                break
            continue
        body = token[2:] if token.startswith("--") else token[1:]
        name, eq, value = body.partition("=")
        flag = flags.get(name)
        if flag is None or (len(name) == 1 and flag.short != name) or (token.startswith("--") and len(name) == 1):
            out.append(token)  # unknown (argparse will say so) or a short flag as it is
            continue
        long_name = f"--{flag.name}"
        if flag.kind == "bool":
            if eq:
                out.append(long_name if parse_bool(value, long_name) else f"--no-{flag.name}")
            else:
                out.append(long_name)
            continue
        if eq:
            out.append(f"{long_name}={value}")
        else:
            out.append(long_name)
            if index < len(argv):
                out.append(argv[index])  # its value, whatever it looks like
                index += 1
    return out


@dataclass
class Invocation:
    """A parsed command line."""

    config: Config
    command: Command | None
    args: argparse.Namespace
    show_help: bool = False
    show_version: bool = False


def _split_command(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """(global part, command name, the rest): the command is the first argument that is
    neither a flag nor the value of a global flag."""
    flags = _flags_by_name(GLOBAL_FLAGS)
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return list(argv[:index]), None, list(argv[index + 1 :])
        if token.startswith("-") and token != "-":
            body = token[2:] if token.startswith("--") else token[1:]
            name, eq, _ = body.partition("=")
            flag = flags.get(name)
            if flag is not None and flag.kind != "bool" and not eq:
                index += 2
                continue
            index += 1
            continue
        return list(argv[:index]), token, list(argv[index + 1 :])
    return list(argv), None, []


def config_from(values: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """defaults < ``FLEETCTL_*`` environment < command line (``values``: flags given)."""
    config = Config()
    known = {f.name for f in fields(Config)}
    level: dict[str, int] = {}  # where each option came from: 1 environment, 2 command line
    for flag in GLOBAL_FLAGS:
        attr = flag.attr
        assert attr in known, attr
        if attr in values:
            setattr(config, attr, values[attr])
            level[attr] = 2
            if attr == "endpoint":
                config.endpoint_given = True
            continue
        raw = environ.get(flag.env)
        if not raw:
            continue  # unset or empty: not given (as fleet read its environment)
        setattr(config, attr, flag.convert(raw, f"environment variable {flag.env}"))
        level[attr] = 1
        if attr == "endpoint":
            config.endpoint_given = True
    for attr in ("ca_file", "cert_file", "key_file", "tunnel", "api_token", "api_token_file"):
        if getattr(config, attr) == "":
            setattr(config, attr, None)
            level.pop(attr, None)
    _one_token(config, level)
    if config.driver not in DRIVERS:
        raise UsageError(f'invalid driver "{config.driver}": one of {", ".join(DRIVERS)}')
    return config


def _one_token(config: Config, level: Mapping[str, int]) -> None:
    """The token and the token file are one option: the command line wins over the
    environment; both from the same place is refused (neither is obviously meant)."""
    token, token_file = level.get("api_token", 0), level.get("api_token_file", 0)
    if not token or not token_file:
        return
    if token == token_file:
        where = (
            "on the command line" if token == 2 else "in the environment (FLEETCTL_API_TOKEN, FLEETCTL_API_TOKEN_FILE)"
        )
        raise UsageError(f"both --api-token and --api-token-file given {where}; give only one")
    if token > token_file:
        config.api_token_file = None
    else:
        config.api_token = None


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Invocation:
    environ = os.environ if environ is None else environ
    head, name, rest = _split_command(argv)
    head = normalise(head, _flags_by_name(GLOBAL_FLAGS))
    main_args = _global_parser().parse_args(head)
    values = {k: v for k, v in vars(main_args).items() if k not in ("help", "version")}
    if name is None:
        config = config_from(values, environ)
        return Invocation(
            config,
            None,
            argparse.Namespace(),
            show_help=main_args.help or not main_args.version,
            show_version=main_args.version and not main_args.help,
        )
    command = COMMANDS_BY_NAME.get(name)
    if command is None:
        raise UsageError(f'unknown command "{name}"; run "fleetctl help" for the list of commands')
    flags = _flags_by_name([*command.flags, *GLOBAL_FLAGS])
    rest = normalise(rest, flags, stop_at_positional=command.name == "ssh")
    options = rest[: rest.index("--")] if "--" in rest else rest
    if command.name == "ssh":
        # ssh's own arguments start at the first word that is not a flag
        first_word = next((i for i, t in enumerate(options) if not t.startswith("-")), len(options))
        options = options[:first_word]
    if main_args.help or "-h" in options or "--help" in options:
        return Invocation(
            config_from(values, environ), command, argparse.Namespace(command=command.name), show_help=True
        )
    args = _command_parser(command).parse_args(rest)
    for flag in GLOBAL_FLAGS:  # global flags after the command win over those before it
        if hasattr(args, flag.attr):
            values[flag.attr] = getattr(args, flag.attr)
            delattr(args, flag.attr)
    config = config_from(values, environ)
    args.command = command.name
    if command.name == "journal":
        args.unit = args.unit[0]
    return Invocation(
        config, command, args, show_help=bool(args.help) or main_args.help, show_version=main_args.version
    )


__all__ = [
    "COMMANDS",
    "COMMANDS_BY_NAME",
    "Command",
    "Flag",
    "GLOBAL_FLAGS",
    "Invocation",
    "command_help",
    "config_from",
    "main_help",
    "normalise",
    "parse",
    "parse_bool",
    "version_line",
]

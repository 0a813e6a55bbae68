"""fleetd entry point: configuration, logging, then the daemon until a signal ends it.

A wrong environment (no systemd, a bad option, an unreadable file) is the operator's to
fix, so fleetd refuses to start with the error on one line and a hint on the next, and
exits non-zero; the traceback only with debug logging on (``verbosity`` of 1 or more, or
``--debug``/``-v``). A crash after fleetd started is a bug and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import replace
from typing import TextIO

from fleetd import __version__
from fleetd.config import Config, ConfigError, load_config, log_level

USAGE = """usage: fleetd [--config PATH] [--OPTION=VALUE ...] [--debug|-v] | --version | --help

Options are those of fleet.conf (e.g. --etcd-servers, --metadata, --agent-ttl,
--public-ip, --disable-engine, --api-listen, --api-token-file, --api-require-token);
each may also be set as FLEET_<OPTION> (e.g. FLEET_API_TOKEN_FILE).
Precedence: fleet.conf < environment < command line.
Secrets (api_token, etcd_password) are best given as files (api_token_file,
etcd_password_file) or in the environment: the command line is visible to every user.
--debug (or -v) turns on debug logging (verbosity=1) and tracebacks of startup errors.
Signals: SIGHUP reloads the configuration, SIGUSR1 logs the state as one JSON line,
SIGTERM/SIGINT stop fleetd.
"""

# Exit statuses: a configuration that cannot be used, and any other refusal to start.
EXIT_CONFIG = 2
EXIT_STARTUP = 1
DEBUG_FLAGS = ("--debug", "-v")

log = logging.getLogger("fleetd")


def _read_file(path: str) -> str | None:
    """A file's text, None when it does not exist; other failures (permissions, not
    UTF-8) raise, and ``load_config`` turns them into one-line errors."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


# A SIGHUP that arrives while fleetd is still starting (before the daemon's own handler is
# installed) must not kill it: remember it, and the daemon reloads once it runs.
early_reload_requested = False


def _remember_hup(signum: int, frame: object) -> None:
    global early_reload_requested
    early_reload_requested = True


def refuse(message: str, hint: str = "", stream: TextIO | None = None) -> None:
    """The error on one line, the hint (if any) on the next: what a refusal prints."""
    stream = stream or sys.stderr
    print(f"fleetd: {message}", file=stream)
    if hint:
        print(f"fleetd: hint: {hint}", file=stream)
    stream.flush()


def _early_debug(args: Sequence[str]) -> bool:
    """Whether debug output was asked for before the configuration could be read (so a
    configuration error can still show its traceback)."""
    if any(arg in DEBUG_FLAGS for arg in args):
        return True
    try:
        return int(os.environ.get("FLEET_VERBOSITY", "0") or 0) >= 1
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGHUP, _remember_hup)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the daemon dumps its state on it, once it runs
    given = list(sys.argv[1:] if argv is None else argv)
    if "--version" in given or "-version" in given:
        print(f"fleetd version {__version__}")
        return 0
    if "--help" in given or "-h" in given:
        print(USAGE, end="")
        return 0
    debug_flag = any(arg in DEBUG_FLAGS for arg in given)
    args = [arg for arg in given if arg not in DEBUG_FLAGS]
    # Warnings while reading the configuration need a handler already; the level follows
    # the configuration's verbosity once it is known.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def load() -> Config:
        config, warnings = load_config(args, os.environ, _read_file)
        if debug_flag:
            config = replace(config, verbosity=max(1, config.verbosity))
        for warning in warnings:
            log.warning("%s", warning)
        return config

    try:
        config = load()
    except ConfigError as exc:
        if _early_debug(given):
            traceback.print_exc()
        refuse(str(exc), exc.hint)
        return EXIT_CONFIG
    debug = config.verbosity >= 1
    logging.getLogger().setLevel(log_level(config))
    log.debug("configuration: %r", config)  # repr() leaves the secrets out
    from fleetd.server import Daemon, StartupError

    daemon: Daemon | None = None
    try:
        daemon = Daemon(config, config_loader=load)
        asyncio.run(daemon.run(reload_pending=lambda: early_reload_requested))
    except StartupError as exc:
        if debug:
            traceback.print_exc()
        refuse(str(exc), exc.hint)
        return EXIT_STARTUP
    except KeyboardInterrupt:  # Ctrl-C before the daemon's own handler was installed
        return 130
    except Exception as exc:
        if daemon is not None and daemon.started:
            log.critical("fleetd stopped by an unexpected error", exc_info=True)
            return EXIT_STARTUP
        if debug:
            traceback.print_exc()
        refuse(
            f"cannot start: {type(exc).__name__}: {exc}",
            "" if debug else "run fleetd with --debug for the traceback (this is probably a bug: report it)",
        )
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())

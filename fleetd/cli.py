"""fleetd entry point: configuration, logging, then the daemon until a signal ends it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from fleetd import __version__
from fleetd.config import ConfigError, load_config

USAGE = """usage: fleetd [--config PATH] [--OPTION=VALUE ...] | --version | --help

Options are those of fleet.conf (e.g. --etcd-servers, --metadata, --agent-ttl,
--public-ip, --disable-engine, --api-listen); each may also be set as FLEET_<OPTION>.
Precedence: fleet.conf < environment < command line.
"""


def _read_file(path: str) -> str | None:
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


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGHUP, _remember_hup)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-version" in args:
        print(f"fleetd version {__version__}")
        return 0
    if "--help" in args or "-h" in args:
        print(USAGE, end="")
        return 0

    def load() -> object:
        config, warnings = load_config(args, os.environ, _read_file)
        for warning in warnings:
            logging.getLogger("fleetd").warning("%s", warning)
        return config

    try:
        config = load()
    except ConfigError as exc:
        print(f"fleetd: {exc}", file=sys.stderr)
        return 2
    from fleetd.config import Config

    assert isinstance(config, Config)
    logging.basicConfig(
        level=logging.DEBUG if config.verbosity > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from fleetd.server import Daemon, StartupError

    try:
        daemon = Daemon(config, config_loader=load)
        asyncio.run(daemon.run(reload_pending=lambda: early_reload_requested))
    except StartupError as exc:
        print(f"fleetd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fleetd entry point: wiring, configuration and signals (the daemon arrives with issue 4)."""

from __future__ import annotations

import argparse
import sys

from fleetd import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetd", description="fleet daemon: agent and engine")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(f"fleetd version {__version__}")
        return 0
    print("fleetd: the daemon is not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

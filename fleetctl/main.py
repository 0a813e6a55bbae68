"""fleetctl entry point.

Only the commands that exist so far are wired; each later command imports what it needs
inside its own function, so that ``fleetctl`` stays fast to start.
"""

from __future__ import annotations

import sys

import click

from fleetd import __version__


def version_line() -> str:
    return f"fleetctl version {__version__}"


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", "show_version", is_flag=True, help="Print the version and exit.")
@click.pass_context
def cli(ctx: click.Context, show_version: bool) -> None:
    """fleetctl: submit, start, stop and inspect systemd units across a fleet cluster."""
    if show_version:
        click.echo(version_line())
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        click.echo(f"\n{version_line()}")


@cli.command()
def version() -> None:
    """Print the version and exit."""
    click.echo(version_line())


@cli.command(name="help")
@click.pass_context
def help_command(ctx: click.Context) -> None:
    """Show this help."""
    parent = ctx.parent
    assert parent is not None
    click.echo(parent.get_help())
    click.echo(f"\n{version_line()}")


def main(argv: list[str] | None = None) -> int:
    """Run fleetctl; usage errors exit 2, other errors 1 (fleet exited 0 on a bad flag)."""
    try:
        cli.main(args=argv, prog_name="fleetctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        exc.show()
        return 1
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

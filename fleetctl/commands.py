"""fleetctl's commands and flags as data, and the help text made from them.

The table is fleet's: the same command names, flags, defaults and help lines, so
``fleetctl help`` reads as fleet users remember it. :mod:`fleetctl.cli` parses against it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetctl.config import (
    DEFAULT_ENDPOINT,
    DEFAULT_ETCD_KEY_PREFIX,
    DEFAULT_KNOWN_HOSTS,
    DRIVERS,
)
from fleetctl.errors import UsageError
from fleetctl.output import DEFAULT_MACHINE_FIELDS, DEFAULT_UNIT_FIELDS, DEFAULT_UNIT_FILE_FIELDS
from fleetctl.tabwriter import tabwrite
from fleetd import __version__
from fleetd.model.journal import DEFAULT_JOURNAL_LINES, DEFAULT_JOURNAL_OUTPUT, JOURNAL_OUTPUTS
from fleetd.model.words import FLAG_BOOL
from fleetd.model.words import parse_bool as parse_words

ENV_PREFIX = "FLEETCTL_"


def version_line() -> str:
    return f"fleetctl version {__version__}"


def parse_bool(text: str, what: str) -> bool:
    try:
        return parse_words(text, FLAG_BOOL)
    except ValueError:
        raise UsageError(f'invalid boolean value "{text}" for {what} (use true or false)') from None


@dataclass(frozen=True)
class Flag:
    name: str  # long name, without dashes
    kind: str  # str, float, int, bool, choice
    help: str
    default: Any = None
    short: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    dest: str | None = None

    @property
    def attr(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    def convert(self, text: str, where: str) -> Any:
        if self.kind == "bool":
            return parse_bool(text, where)
        if self.kind in ("float", "int"):
            try:
                value = float(text) if self.kind == "float" else int(text)
            except ValueError:
                raise UsageError(
                    f'invalid value "{text}" for {where}: '
                    f"expected a {'number' if self.kind == 'float' else 'whole number'}"
                ) from None
            if value < 0:
                raise UsageError(f"invalid value {text} for {where}: must not be negative")
            return value
        if self.kind == "choice":
            # Any case: fleet's own help spells the driver "API" (--driver=API).
            if text.lower() not in self.choices:
                raise UsageError(f'invalid value "{text}" for {where}: one of {", ".join(self.choices)}')
            return text.lower()
        return text


GLOBAL_FLAGS: tuple[Flag, ...] = (
    Flag(
        "endpoint",
        "str",
        "Location of the fleet API (unix:///path or http(s)://host:port) if --driver=api; "
        "etcd client URLs if --driver=etcd. A comma-separated list is tried in order.",
        DEFAULT_ENDPOINT,
    ),
    Flag(
        "driver",
        "choice",
        "Talk to the cluster through the fleet API (api, or fleet's spelling API) or to etcd directly (etcd).",
        "api",
        choices=DRIVERS,
    ),
    Flag("etcd-key-prefix", "str", "Key prefix of fleet's data in etcd (--driver=etcd).", DEFAULT_ETCD_KEY_PREFIX),
    Flag("ca-file", "str", "CA bundle to verify the fleet API's (or etcd's) TLS certificate.", ""),
    Flag("cert-file", "str", "Client certificate for TLS (PEM).", ""),
    Flag("key-file", "str", "Key of the client certificate (PEM).", ""),
    Flag(
        "api-token",
        "str",
        "Bearer token for fleetd's TCP API (not needed on the unix socket). Sent only over TLS or to "
        "an --endpoint given, never in clear text to a machine address learnt from the cluster.",
        "",
    ),
    Flag("api-token-file", "str", "File holding the bearer token (keeps it off the command line).", ""),
    Flag("request-timeout", "float", "Seconds to allow a single request before considering it failed.", 3.0),
    Flag("tunnel", "str", "Reach the cluster through an SSH tunnel via this host[:port] (also used by ssh).", ""),
    Flag("ssh-username", "str", "Username to use when connecting over SSH.", "core"),
    Flag("known-hosts-file", "str", "File used to store remote machine fingerprints.", DEFAULT_KNOWN_HOSTS),
    Flag(
        "strict-host-key-checking",
        "bool",
        "Verify host keys presented by remote machines before initiating SSH connections.",
        True,
    ),
    Flag("ssh-timeout", "float", "Seconds to allow for an SSH connection to be established.", 10.0),
    Flag("debug", "bool", "Print out more debug information to stderr.", False),
)

_LIST = (
    Flag("full", "bool", "Do not ellipsize fields on output.", False, short="l"),
    Flag("no-legend", "bool", "Do not print a legend (column headers).", False),
    Flag("output", "choice", "Output format: table (fleet's) or json.", "table", short="o", choices=("table", "json")),
)
_REPLACE = Flag("replace", "bool", "Replace the unit in the cluster with the local unit file if they differ.", False)
_NO_BLOCK = Flag("no-block", "bool", "Do not wait until the units have reached the state before exiting.", False)
_ATTEMPTS = Flag(
    "block-attempts",
    "int",
    "Wait at most N attempts (two seconds each, as fleet) for the units to reach the state; 0 waits for ever.",
    0,
    metavar="N",
)

_UPDATE = (
    Flag("max-parallel", "int", "Replace at most N instances at a time.", 1, metavar="N"),
    Flag(
        "min-healthy",
        "str",
        "How long an instance must be active on its new body to count as healthy (e.g. 10s).",
        "10s",
        metavar="DURATION",
    ),
    Flag(
        "healthy-deadline",
        "str",
        "Stop the update when an instance is not healthy this long after its replace (e.g. 5m).",
        "5m",
        metavar="DURATION",
    ),
    Flag("no-auto-revert", "bool", "When the update stops, leave the changed instances as they are.", False),
    Flag("no-block", "bool", "Start the update and exit without following it.", False),
)


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    usage: str
    handler: str  # module:function
    flags: tuple[Flag, ...] = ()
    positional: tuple[tuple[str, str | int, str], ...] = ()  # (dest, nargs, metavar)
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


COMMANDS: tuple[Command, ...] = (
    Command(
        "cat",
        "Output the contents of a submitted unit",
        "<unit>...",
        "fleetctl.cmd_units:cmd_cat",
        (
            Flag(
                "revision",
                "int",
                "Show the unit file of this earlier revision instead (see 'fleetctl revisions').",
                None,
                metavar="N",
            ),
        ),
        (("units", "+", "UNIT"),),
        "Outputs the unit file that is currently loaded in the cluster. Useful to verify the correct "
        "version of a unit is running. Prints the unit file as stored in the cluster (canonical form); "
        "with --revision=N, the unit file the unit had at revision N.",
    ),
    Command(
        "destroy",
        "Destroy one or more units in the cluster",
        "<unit>...",
        "fleetctl.cmd_units:cmd_destroy",
        (_NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Completely remove one or more running or submitted units from the cluster. Instructs systemd on the "
        "host machine to destroy the unit, deferring to systemd completely for any custom stop directives "
        "(i.e. ExecStop option in the unit file). Destroyed units are impossible to start unless re-submitted. "
        "Removes the units from the cluster (stopping and unloading them) and waits until no machine "
        "runs them any more. Globs match unit names in the cluster, e.g. 'web@*'.",
    ),
    Command(
        "help",
        "Show a list of commands or help for one command",
        "[<command>]",
        "",
        positional=(("topic", "?", "COMMAND"),),
        description="Help provides help for any command in the application. Simply type fleetctl help "
        "[path to command] for full details.",
    ),
    Command(
        "revisions",
        "List the kept revisions of a unit",
        "[options] <unit>",
        "fleetctl.cmd_revisions:cmd_revisions",
        (*_LIST,),
        (("unit", 1, "UNIT"),),
        "Lists the bodies a unit has had, oldest first: revision number, hash, when it was written and who "
        "wrote it (the current one is marked). Every submit or replace keeps one; the newest 10 are kept "
        "(fleetd's unit_revisions). Show one with 'fleetctl cat --revision=N UNIT'.",
    ),
    Command(
        "history",
        "Show what happened to units and machines in the cluster, and why",
        "[options] [<unit>...]",
        "fleetctl.cmd_history:cmd_history",
        (
            *_LIST,
            Flag("follow", "bool", "Keep printing events as they are recorded.", False, short="f"),
        ),
        (("units", "*", "UNIT"),),
        "Shows the cluster's history, oldest first: where units were placed and moved and why, when they "
        "started, stopped or failed, and which machines joined or were lost. With units (names or globs such "
        "as 'web@*'), only their events; a destroyed unit's history is still shown. --output json prints a "
        "list of {time, unit, machine, event, reason, revision} objects (with -f, one object per line).",
    ),
    Command(
        "update",
        "Replace a unit's body instance by instance, each healthy before the next",
        "[options] <file>...",
        "fleetctl.cmd_update:cmd_update",
        (*_UPDATE,),
        (("files", "+", "FILE"),),
        "Rolling update: each FILE (a template such as web@.service, or a plain launched unit) becomes the "
        "new body of every launched instance, at most --max-parallel at a time, each active on the new body "
        "for --min-healthy before the next; then the template itself. An instance not healthy within "
        "--healthy-deadline stops the update and, unless --no-auto-revert, returns the changed instances to "
        "their previous bodies (exit status 1, with the reason). The engine leader carries it out: "
        "interrupting fleetctl does not stop it. "
        "Global units are not supported yet. See docs/updates.md.",
    ),
    Command(
        "rollback",
        "Return a unit to a kept revision by a rolling update",
        "[options] <unit>",
        "fleetctl.cmd_update:cmd_rollback",
        (
            Flag("to", "int", "The revision to return to (default: the one before the current).", None, metavar="N"),
            *_UPDATE,
        ),
        (("unit", 1, "UNIT"),),
        "A rolling update (as 'fleetctl update', with the same options) whose new body is the unit's kept "
        "revision N (see 'fleetctl revisions'), by default the one before its current revision.",
    ),
    Command(
        "update-status",
        "Show where a unit's latest rolling update stands",
        "[options] <unit>",
        "fleetctl.cmd_update:cmd_update_status",
        (
            Flag("wait", "bool", "Follow the update until it ends (exit status 1 when it stopped).", False),
            Flag("output", "choice", "Output format: table or json.", "table", short="o", choices=("table", "json")),
        ),
        (("unit", 1, "UNIT"),),
        "Prints the state of the unit's latest update or rollback (and why it stopped), and each "
        "instance's phase; --output json prints the record. With --wait, follows an update still in "
        "progress as 'fleetctl update' does: the way back to it after that fleetctl was interrupted.",
    ),
    Command(
        "journal",
        "Print the journal of a unit in the cluster to stdout",
        "[options] <unit>",
        "fleetctl.cmd_remote:cmd_journal",
        (
            Flag(
                "lines",
                "int",
                "Number of recent journal entries to show.",
                DEFAULT_JOURNAL_LINES,
                short="n",
                metavar="N",
            ),
            Flag(
                "follow",
                "bool",
                "Continuously print new entries as they are appended to the journal.",
                False,
                short="f",
            ),
            Flag(
                "output",
                "choice",
                "journalctl output format (short, verbose, json, cat, ...).",
                DEFAULT_JOURNAL_OUTPUT,
                choices=JOURNAL_OUTPUTS,
                dest="journal_output",
            ),
            Flag("sudo", "bool", "Accepted for compatibility with fleet (the journal is read by fleetd).", False),
        ),
        (("unit", 1, "UNIT"),),
        "Outputs the journal of a unit by connecting to the machine that the unit occupies. "
        "Reads the unit's journal from the fleetd API of the machine running it (no SSH needed). "
        "For a global unit, every machine's lines, each prefixed with the machine's id.",
    ),
    Command(
        "list-machines",
        "Enumerate the current hosts in the cluster",
        "[options]",
        "fleetctl.cmd_list:list_machines",
        (
            *_LIST,
            Flag("fields", "str", f"Columns to print: machine,ip,metadata (default {DEFAULT_MACHINE_FIELDS}).", None),
        ),
        description="Lists all active machines within the cluster. Previously active machines will not appear "
        "in this list.",
        defaults={"default_fields": DEFAULT_MACHINE_FIELDS},
    ),
    Command(
        "list-unit-files",
        "List the units that exist in the cluster",
        "[options]",
        "fleetctl.cmd_list:list_unit_files",
        (
            *_LIST,
            Flag(
                "fields",
                "str",
                f"Columns to print: unit,hash,dstate,state,target,global,desc (default {DEFAULT_UNIT_FILE_FIELDS}).",
                None,
            ),
        ),
        description="Lists all unit files that exist in the cluster (whether or not they are loaded onto a "
        'machine). The deprecated field name "tmachine" means "target".',
        defaults={"default_fields": DEFAULT_UNIT_FILE_FIELDS},
    ),
    Command(
        "list-units",
        "List the current state of units in the cluster",
        "[options]",
        "fleetctl.cmd_list:list_units",
        (
            *_LIST,
            Flag(
                "fields",
                "str",
                f"Columns to print: unit,load,active,sub,machine,hash (default {DEFAULT_UNIT_FIELDS}).",
                None,
            ),
        ),
        description="Lists the state of all units in the cluster loaded onto a machine.",
        defaults={"default_fields": DEFAULT_UNIT_FIELDS},
    ),
    Command(
        "load",
        "Schedule one or more units in the cluster, first submitting them if necessary",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_submit_load_start",
        (_REPLACE, _NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Load one or many units in the cluster into systemd, but do not start. Select units to load by glob "
        "matching for units in the current working directory or matching the names of previously submitted "
        "units. Arguments are unit files or names; an instance such as web@1.service is made from its "
        "template (in the cluster, or web@.service next to the argument).",
    ),
    Command(
        "restart",
        "Instruct systemd to restart one or more units in the cluster",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_restart",
        (_NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Restarts one or more units in the cluster. If they are stopped it starts them. Instructs systemd on "
        "the host machine to stop then start the unit, deferring to systemd completely for any custom restart "
        "directives (i.e. ExecStop options in the unit file). "
        "Stops the units, waits until they have stopped (on every machine, for global units), then starts them again.",
    ),
    Command(
        "ssh",
        "Open interactive shell on a machine in the cluster",
        "[options] <machine|unit> [-- <command>...]",
        "fleetctl.cmd_remote:cmd_ssh",
        (
            Flag("machine", "str", "Open SSH connection to a specific machine (id or id prefix).", "", short="m"),
            Flag("unit", "str", "Open SSH connection to the machine running the given unit.", "", short="u"),
            Flag("forward-agent", "bool", "Forward local ssh-agent to the remote machine.", False, short="A"),
            Flag("ssh-port", "int", "Connect to the remote machine's SSH daemon on this port.", 22),
        ),
        (("args", argparse.REMAINDER, "ARGS"),),
        "Open an interactive shell on a specific machine in the cluster or on the machine where the specified "
        "unit is located. fleetctl tries to detect whether your first argument is a machine or a unit. To skip "
        "this check use the --machine or --unit flags. "
        "Runs the system ssh client against the machine's IP; --tunnel becomes ssh's -J.",
    ),
    Command(
        "start",
        "Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_submit_load_start",
        (_REPLACE, _NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Start one or many units on the cluster. Select units to start by glob matching for units in the "
        "current working directory or matching names of previously submitted units. "
        "Waits until each unit is active on its machine (global units: only triggered).",
    ),
    Command(
        "status",
        "Output the status of one or more units in the cluster",
        "<unit>...",
        "fleetctl.cmd_remote:cmd_status",
        positional=(("units", "+", "UNIT"),),
        description="Output the status of one or more units currently running in the cluster. Supports glob "
        "matching of units in the current working directory or matches previously started units. "
        "systemd's status of each unit, from the fleetd of the machine running it "
        "(every machine for a global unit).",
    ),
    Command(
        "stop",
        "Instruct systemd to stop one or more units in the cluster",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_stop_unload",
        (_NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Stop one or more units from running in the cluster, but allow them to be started again in the future. "
        "Instructs systemd on the host machine to stop the unit, deferring to systemd completely for any custom "
        "stop directives (i.e. ExecStop option in the unit file).",
    ),
    Command(
        "submit",
        "Upload one or more units to the cluster without starting them",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_submit_load_start",
        (_REPLACE,),
        (("units", "+", "UNIT"),),
        "Upload one or more units to the cluster without starting them. Useful for validating units before they "
        "are started. This operation is idempotent; if a named unit already exists in the cluster, it will not be "
        "resubmitted (unless --replace is given).",
    ),
    Command(
        "unload",
        "Unschedule one or more units in the cluster",
        "[options] <unit>...",
        "fleetctl.cmd_units:cmd_stop_unload",
        (_NO_BLOCK, _ATTEMPTS),
        (("units", "+", "UNIT"),),
        "Unschedule one or more units in the cluster.",
    ),
    Command("version", "Print the version and exit", "", "", description="Print the version and exit"),
)
COMMANDS_BY_NAME = {c.name: c for c in COMMANDS}


# -- help -------------------------------------------------------------------------------------


def _flag_line(flag: Flag) -> str:
    names = f"-{flag.short}, --{flag.name}" if flag.short else f"--{flag.name}"
    if flag.kind == "bool":
        default = "true" if flag.default else "false"
        return f"\t{names}={default}\t{flag.help}"
    if flag.default is None:
        return f"\t{names}\t{flag.help}"
    default = (
        f'"{flag.default}"'
        if flag.kind in ("str", "choice")
        else f"{flag.default:g}"
        if flag.kind == "float"
        else str(flag.default)
    )
    return f"\t{names}={default}\t{flag.help}"


def main_help() -> str:
    commands = "".join(f"\t{c.name}\t{c.summary}\n" for c in COMMANDS)
    options = "".join(_flag_line(f) + "\n" for f in GLOBAL_FLAGS)
    options += "\t-h, --help\tShow this help\n\t--version\tPrint the version and exit\n"
    return (
        "NAME:\n\tfleetctl - fleetctl is a command-line interface to fleet, the cluster-wide systemd scheduler.\n\n"
        "USAGE:\n\tfleetctl [global options] <command> [command options] [arguments...]\n\n"
        f"VERSION:\n\t{__version__}\n\n"
        f"COMMANDS:\n{tabwrite(commands)}\n"
        f"GLOBAL OPTIONS:\n{tabwrite(options)}\n"
        'Global options can also be configured via upper-case environment variables prefixed by "FLEETCTL_"\n'
        'For example, "some-flag" => "FLEETCTL_SOME_FLAG"\n\n'
        'Run "fleetctl help <command>" for more details on a specific command.\n'
    )


def command_help(command: Command) -> str:
    text = f"NAME:\n\tfleetctl {command.name} - {command.summary}\n\n"
    text += f"USAGE:\n\tfleetctl {command.name}{' ' + command.usage if command.usage else ''}\n"
    if command.description:
        text += f"\nDESCRIPTION:\n\t{command.description}\n"
    if command.flags:
        options = "".join(_flag_line(f) + "\n" for f in command.flags)
        text += f"\nOPTIONS:\n{tabwrite(options)}"
    text += '\nGlobal options (see "fleetctl help") may also be given after the command.\n'
    return text

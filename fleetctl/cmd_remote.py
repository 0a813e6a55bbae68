"""status, journal and ssh: things that happen on the machine running a unit.

fleet ran ``systemctl status`` and ``journalctl`` over SSH. Here status and journal come
from the fleetd API *of that machine* (``/fleet/v1/machines/<id>/status|journal/<unit>``,
at ``http(s)://<machine IP>:<port>``: the port of a TCP endpoint, else 54728; with the same
TLS files, and the token only over https or to an address given with --endpoint: see
``fleetctl.transport.token_allowed``), so no SSH access is needed. ``ssh`` still runs the system ``ssh``.
"""

from __future__ import annotations

import argparse
import os
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fleetctl.client import Record
from fleetctl.cmd_units import Units, report, resolve_names
from fleetctl.context import Context
from fleetctl.errors import ApiError, FleetctlError, NotReachable, UsageError
from fleetctl.follow import Follower
from fleetctl.output import is_global, machine_legend
from fleetctl.transport import API, ConnectFailed, Transport, error_message, iter_lines, unauthorized_hint
from fleetctl.tunnel import ensure_known_hosts_dir, jump_spec, ssh_options
from fleetd.model.state import short_id


@dataclass
class Target:
    """A unit on one machine."""

    unit: str
    machine: Record

    @property
    def machine_id(self) -> str:
        return str(self.machine["id"])


def _machines(ctx: Context) -> dict[str, Record]:
    return {m["id"]: m for m in ctx.cluster.machines()}


def targets_of(ctx: Context, record: Record, machines: dict[str, Record]) -> list[Target]:
    """Where a unit runs: its machine, or every machine reporting a global unit."""
    name = record["name"]
    if is_global(record):
        ids = sorted({s["machineID"] for s in ctx.cluster.states(unit=name)})
        if not ids:
            raise FleetctlError(f"Global unit {name} does not appear to be running on any machine.")
    else:
        machine = record.get("machineID") or ""
        if not machine:
            raise FleetctlError(f"Unit {name} does not appear to be running.")
        ids = [machine]
    return [Target(name, machines.get(i) or {"id": i, "primaryIP": "", "metadata": {}}) for i in ids]


def open_on_machine(ctx: Context, machine: Record, path: str, stream: bool = False) -> tuple[Transport, object]:
    """GET ``path`` (under /fleet/v1) from the fleetd of ``machine``; returns the transport
    and the open 200 response. Errors name the machine and what to do."""
    transports = ctx.cluster.node_transports(machine)
    legend = machine_legend(machine["id"], {machine["id"]: machine}, False)
    if not transports:
        raise FleetctlError(
            f"machine {legend} has no known IP address, so its fleetd cannot be asked; "
            "run fleetctl on that machine (its unix socket) instead"
        )
    tried = []
    for transport in transports:
        try:
            response = transport.open("GET", f"{API}{path}")
        except ConnectFailed as exc:
            tried.append(f"{transport.endpoint.url} ({getattr(exc.cause, 'strerror', None) or exc.cause})")
            continue
        except TimeoutError:
            tried.append(f"{transport.endpoint.url} (no answer within {ctx.config.request_timeout:g} s)")
            continue
        except OSError as exc:
            tried.append(f"{transport.endpoint.url} ({exc})")
            continue
        if response.status == 200:
            if stream:
                sock = transport._connection().sock
                if sock is not None:
                    sock.settimeout(None)  # a followed journal may be quiet for a long time
            return transport, response
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status == 404 and "x-fleet-machine-ip" in headers:
            tried.append(f"{transport.endpoint.url} (another machine's fleetd)")
            continue  # this fleetd is not that machine's: try the machine's own
        message = error_message(response.status, body)
        if response.status == 404 and not machine.get("primaryIP") and f"machine {machine['id']} is not" in message:
            raise NotReachable(
                f"machine {legend} has no known IP address (its fleetd registered none: set public_ip in its "
                f"fleet.conf), so its fleetd cannot be asked from here; {transport.endpoint.url} is another "
                "machine's fleetd"
            )
        if response.status == 401:
            message += unauthorized_hint(transport)  # says so when the token was withheld
        raise ApiError(response.status, f"fleetd on {legend}: {message}", headers)
    raise NotReachable(
        f"cannot reach the fleetd of machine {legend}: tried {'; '.join(tried)}. Journal and status are "
        f"served by the fleetd on the machine itself: its API must listen on TCP (port "
        f"{transports[-1].endpoint.port or 54728}) and be reachable from here"
    )


EXIT_CODE_HEADER = "X-Fleet-Exit-Code"


def _exit_code(response: object) -> int:
    """The remote command's exit code from ``X-Fleet-Exit-Code`` (0 when a fleetd does not
    send it); one a shell cannot carry (a signal's negative code, beyond 255) is 1."""
    return _code(response.getheader(EXIT_CODE_HEADER))  # type: ignore[attr-defined]


def failure_code(exc: FleetctlError) -> int:
    """What fleetctl exits with for a failed remote read: the remote tool's own code when
    fleetd sent it (journalctl's, systemctl's), else 1."""
    headers = exc.headers if isinstance(exc, ApiError) else {}
    value = next((v for k, v in headers.items() if k.lower() == EXIT_CODE_HEADER.lower()), None)
    return (_code(value) or 1) if value is not None else 1


def _code(value: str | None) -> int:
    try:
        code = int(value) if value is not None else 0
    except ValueError:
        return 0
    return code if 0 <= code <= 255 else 1


def _get_text(ctx: Context, machine: Record, path: str) -> tuple[str, int]:
    """The text of a 200 answer and the remote command's exit code it carries."""
    transport, response = open_on_machine(ctx, machine, path)
    try:
        return response.read().decode("utf-8", "replace"), _exit_code(response)  # type: ignore[attr-defined]
    finally:
        transport.close()


# -- status -----------------------------------------------------------------------------------


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """systemctl status of each unit on its machine. The exit status is the first failure's,
    as fleet's (which ran ``systemctl status`` over SSH and stopped at the first non-zero
    code): systemctl's own code (3 inactive, 4 no such unit) or 1 for fleetctl's errors.
    Unlike fleet, the units after a failure are still shown."""
    units = Units(ctx)
    names, errors = resolve_names(ctx, args.units, units)
    exit_code = 1 if errors else 0
    found = units.get_many(names)
    machines: dict[str, Record] | None = None
    first = True
    for name in names:
        record = found[name]
        if record is None:
            errors.append(f"Unit {name} does not exist.")
            exit_code = exit_code or 1
            continue
        if machines is None:
            machines = _machines(ctx)
        try:
            targets = targets_of(ctx, record, machines)
        except FleetctlError as exc:
            errors.append(str(exc))
            exit_code = exit_code or 1
            continue
        many = len(targets) > 1 or is_global(record)
        for target in targets:
            path = f"/machines/{quote(target.machine_id)}/status/{quote(name, safe='@:')}"
            try:
                text, code = _get_text(ctx, target.machine, path)
            except FleetctlError as exc:
                errors.append(str(exc))
                exit_code = exit_code or failure_code(exc)
                continue
            exit_code = exit_code or code
            if not first:
                ctx.out.write("\n")
            first = False
            if many:
                ctx.out.write(f"Machine {machine_legend(target.machine_id, machines, False)}:\n")
            ctx.out.write(text if text.endswith("\n") or not text else text + "\n")
            ctx.out.flush()
    report(ctx, errors)
    return exit_code


# -- journal ----------------------------------------------------------------------------------


def _journal_path(target: Target, args: argparse.Namespace, lines: int | None = None) -> str:
    query = {"lines": str(args.lines if lines is None else lines), "output": args.journal_output}
    if args.follow:
        query["follow"] = "true"
    return f"/machines/{quote(target.machine_id)}/journal/{quote(target.unit, safe='@:')}?{urlencode(query)}"


def _follow(
    ctx: Context, record: Record, targets: list[Target], machines: dict[str, Record], args: argparse.Namespace
) -> int:
    """``journal -f``: stays with the unit when it moves (and, for a global unit, takes in
    machines that start running it); see :mod:`fleetctl.follow`."""
    name = record["name"]

    def open_stream(machine: Record, lines: int) -> tuple[object, object]:
        target = Target(name, machine)
        return open_on_machine(ctx, machine, _journal_path(target, args, lines), stream=True)

    follower = Follower(ctx, name, args.lines, open_stream, prefix_lines=is_global(record))
    return follower.run({t.machine_id for t in targets}, machines)


def cmd_journal(ctx: Context, args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise UsageError("--lines must be 0 or more", "journal")
    units = Units(ctx)
    names, errors = resolve_names(ctx, [args.unit], units)
    if errors:
        return report(ctx, errors)
    if len(names) != 1:
        return report(ctx, [f"{args.unit} matches {len(names)} units ({', '.join(names)}); journal shows one unit"])
    name = names[0]
    record = units.get(name)
    if record is None:
        return report(ctx, [f"Unit {name} does not exist."])
    machines = _machines(ctx)
    try:
        targets = targets_of(ctx, record, machines)
    except FleetctlError as exc:
        return report(ctx, [str(exc)])
    if args.follow:
        try:
            return _follow(ctx, record, targets, machines, args)
        except FleetctlError as exc:  # not even the first stream could be opened
            report(ctx, [str(exc)])
            return failure_code(exc)
    if len(targets) == 1 and not is_global(record):
        try:
            transport, response = open_on_machine(
                ctx, targets[0].machine, _journal_path(targets[0], args), stream=args.follow
            )
        except FleetctlError as exc:
            report(ctx, [str(exc)])
            return failure_code(exc)
        try:
            for line in iter_lines(response):  # type: ignore[arg-type]
                ctx.out.write(line + "\n")
                ctx.out.flush()
        finally:
            transport.close()
        return 0
    return _journal_many(ctx, targets, args)


def _journal_many(ctx: Context, targets: list[Target], args: argparse.Namespace) -> int:
    """A global unit without --follow: every machine's journal, read at once, printed
    machine by machine with each line prefixed by the machine's short id."""
    lock = threading.Lock()
    errors: list[str] = []
    collected: dict[str, list[str]] = {}

    def read(target: Target) -> None:
        prefix = f"{short_id(target.machine_id)}: "
        lines: list[str] = []
        collected[target.machine_id] = lines
        try:
            transport, response = open_on_machine(ctx, target.machine, _journal_path(target, args))
        except FleetctlError as exc:
            with lock:
                errors.append(str(exc))
            return
        try:
            lines.extend(prefix + line for line in iter_lines(response))  # type: ignore[arg-type]
        except OSError as exc:
            with lock:
                errors.append(f"reading the journal from {short_id(target.machine_id)} failed: {exc}")
        finally:
            transport.close()

    threads = [threading.Thread(target=read, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # a timeout keeps Ctrl-C working in the main thread
    for target in targets:
        for line in collected.get(target.machine_id, []):
            ctx.out.write(line + "\n")
    ctx.out.flush()
    return report(ctx, errors)


# -- ssh --------------------------------------------------------------------------------------


def _strip_dashes(args: list[str]) -> list[str]:
    return args[1:] if args and args[0] == "--" else args


def find_address(ctx: Context, lookup: str, kind: str | None) -> str:
    """The IP of a machine (id or id prefix) or of the machine running a unit; ``kind``
    limits the search to "machine" or "unit"."""
    machines = ctx.cluster.machines()
    by_id = {m["id"]: m for m in machines}
    machine_hits = [m for m in machines if lookup and m["id"].startswith(lookup)] if kind != "unit" else []
    unit_hits: list[Record] = []
    if kind != "machine":
        from fleetctl.arguments import unit_name

        try:
            name = unit_name(lookup)
        except FleetctlError:
            name = None
        record = ctx.cluster.unit(name) if name else None
        if record is not None:
            if is_global(record):
                ids = sorted({s["machineID"] for s in ctx.cluster.states(unit=name)})
                raise FleetctlError(
                    f"{name} is a global unit running on {len(ids)} machines; pick one with --machine "
                    f"({', '.join(short_id(i) for i in ids) or 'none running'})"
                )
            machine = record.get("machineID") or ""
            if not machine:
                raise FleetctlError(f"Unit {name} does not appear to be running.")
            unit_hits = [by_id.get(machine) or {"id": machine, "primaryIP": ""}]
    if machine_hits and unit_hits:
        raise FleetctlError(f"ambiguous argument: both a machine and a unit match {lookup}; use --machine or --unit")
    if len(machine_hits) > 1:
        raise FleetctlError(
            f"{lookup} matches {len(machine_hits)} machines ({', '.join(short_id(m['id']) for m in machine_hits)}); "
            "give more of the machine id"
        )
    hits = machine_hits or unit_hits
    if not hits:
        what = {"machine": "machine", "unit": "unit"}.get(kind or "", "unit or machine")
        raise FleetctlError(f"could not find a matching {what} for {lookup}")
    address = hits[0].get("primaryIP") or ""
    if not address:
        raise FleetctlError(f"could not determine the address of machine {hits[0]['id']}")
    return str(address)


def ssh_argv(ctx: Context, address: str, command: list[str], forward_agent: bool, port: int) -> list[str]:
    """The system ssh command line for ``fleetctl ssh``."""
    config = ctx.config
    argv = ["ssh"]
    if forward_agent:
        argv.append("-A")
    argv += ["-p", str(port)]
    argv += ssh_options(config)
    if config.tunnel:
        argv += ["-J", jump_spec(config, config.tunnel)]
    argv += ["--", address]
    argv += command
    return argv


def cmd_ssh(ctx: Context, args: argparse.Namespace) -> int:
    rest = list(args.args or [])
    if args.machine and args.unit:
        raise UsageError("both --machine and --unit given; use only one", "ssh")
    if args.machine:
        lookup, kind, command = args.machine, "machine", _strip_dashes(rest)
    elif args.unit:
        lookup, kind, command = args.unit, "unit", _strip_dashes(rest)
    else:
        rest = _strip_dashes(rest)
        if not rest:
            raise UsageError("give a machine or unit: fleetctl ssh MACHINE|UNIT [-- COMMAND]", "ssh")
        lookup, kind, command = rest[0], None, _strip_dashes(rest[1:])
    if args.ssh_port <= 0 or args.ssh_port > 65535:
        raise UsageError(f"--ssh-port {args.ssh_port} is not a TCP port", "ssh")
    address = find_address(ctx, lookup, kind)
    argv = ssh_argv(ctx, address, command, args.forward_agent, args.ssh_port)
    ensure_known_hosts_dir(ctx.config)
    if ctx.config.debug:
        ctx.warn("DEBUG: exec " + " ".join(argv))
    ctx.out.flush()
    ctx.err.flush()
    ctx.close()
    try:
        os.execvp("ssh", argv)
    except OSError as exc:
        raise FleetctlError(f"cannot run ssh: {exc.strerror or exc}; is the OpenSSH client installed?") from None
    return 0  # pragma: no cover - execvp does not return


__all__ = ["cmd_journal", "cmd_ssh", "cmd_status", "find_address", "ssh_argv"]

"""fleetd's configuration: fleet.conf, FLEET_* environment variables, command-line flags.

Each later source overrides the earlier ones (file < environment < flags), per option.
Parsing is pure (text and mappings in, a ``Config`` out) so every rule is testable without
touching the machine; only ``load_config`` reads files (fleet.conf, and the secret files
``api_token_file`` and ``etcd_password_file``, so a secret never has to be on the command
line where every user can read it).

Errors name the source and the option: ``/etc/fleet/fleet.conf:4: agent_ttl: invalid
duration "ten"``. Unknown options in the file are warnings (an upgrade or a downgrade must
not stop a machine from booting), unknown flags are errors. fleet's options that have no
effect here (``IGNORED_OPTIONS``) are accepted from every source with a warning saying why,
and a malformed metadata pair is skipped with a warning naming it, as fleet skipped it.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fleetd.model import words
from fleetd.registry import DEFAULT_PREFIX
from fleetd.settings import Settings

DEFAULT_CONFIG_FILE = "/etc/fleet/fleet.conf"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names source and option.

    ``hint`` says what to do about it, on a line of its own: fleetd refuses to start with
    these two lines and no traceback, so they must be enough to fix the machine.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Config:
    etcd_servers: tuple[str, ...] = ("http://127.0.0.1:2379", "http://127.0.0.1:4001")
    etcd_key_prefix: str = DEFAULT_PREFIX
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_username: str = ""
    # Secrets stay out of repr(): a logged or printed Config must not leak them.
    etcd_password: str = field(default="", repr=False)
    # Beyond fleet: the password read from a file (a secret never needs the command line).
    etcd_password_file: str = ""
    etcd_request_timeout: float = 1.0
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    # 10 s instead of fleet's 30 s: see Settings.agent_ttl for why.
    agent_ttl: float = 10.0
    engine_reconcile_interval: float = 2.0
    units_directory: str = "/run/fleet/units/"
    systemd_user: bool = False
    disable_engine: bool = False
    token_limit: int = 100
    verbosity: int = 0
    # Beyond fleet: where the API listens without socket activation ("unix:/path" or
    # "host:port", comma list), the TCP API's bearer token and TLS files.
    api_listen: tuple[str, ...] = ()
    api_token: str = field(default="", repr=False)
    api_token_file: str = ""
    # Refuse to start rather than serve a TCP listener without a token (the default only
    # warns, so fleet's socket-activated TCP API keeps working unchanged).
    api_require_token: bool = False
    api_certfile: str = ""
    api_keyfile: str = ""
    api_cafile: str = ""
    # What a graceful stop (SIGTERM) does with local units: fleet stopped and unloaded
    # them ("unload", the default); "keep" leaves them running for a quick restart/upgrade.
    stop_units_on_exit: bool = True
    machine_id_file: str = "/etc/machine-id"
    # Beyond fleet: the TCP port (on public_ip) where this fleetd answers other fleetds for
    # the journal and status of its own units, so fleetctl needs no SSH and no TCP API
    # (docs/remote.md); 0 turns it off.
    peer_port: int = 54729
    # Beyond fleet: the history's retention (GET /fleet/v1/events, fleetctl history): the
    # newest this many events, none older than this (the engine leader prunes).
    history_max_events: int = 10_000
    # Beyond fleet: how many bodies of each unit to keep (fleetctl revisions, cat --revision)
    unit_revisions: int = 10
    history_max_age: float = 7 * 24 * 3600.0

    def settings(self) -> Settings:
        return Settings(
            agent_ttl=self.agent_ttl,
            engine_ttl=self.agent_ttl,
            engine_reconcile_interval=self.engine_reconcile_interval,
            history_keep=self.history_max_events,
            history_max_age=self.history_max_age,
        )


def log_level(config: Config) -> int:
    """fleet's rule: ``verbosity`` of 1 or more turns on debug logging."""
    return logging.DEBUG if config.verbosity >= 1 else logging.INFO


# -- value parsers ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """``30s``, ``1m30s``, ``500ms``, ``1.5`` (seconds) -> seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or not value:
        raise ValueError(f'invalid duration "{text}" (use e.g. 30s, 1m30s, 500ms)')
    return total


def parse_bool(text: str) -> bool:
    """A boolean option, with the words fleetd's configuration accepts (``CONFIG_BOOL``)."""
    return words.parse_bool(text, words.CONFIG_BOOL)


def parse_list(text: str) -> tuple[str, ...]:
    """A comma list; fleet's ``["a","b"]`` form is accepted too."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    items = [item.strip().strip('"').strip("'") for item in value.split(",")]
    return tuple(item for item in items if item)


def _metadata_pair(pair: str) -> tuple[str, str] | None:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip() or not value.strip() or "=" in value:
        return None
    return key.strip(), value.strip()


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> mapping. A malformed pair is skipped, as fleet skipped it; fleetd
    warns about each (:func:`malformed_metadata`), so the valid pairs keep the machine
    schedulable and the operator still learns about the typo."""
    pairs = (_metadata_pair(pair) for pair in parse_list(text))
    return dict(pair for pair in pairs if pair is not None)


def malformed_metadata(text: str) -> list[str]:
    """The pairs of ``k=v,k2=v2`` that :func:`parse_metadata` skips."""
    return [pair for pair in parse_list(text) if _metadata_pair(pair) is None]


def _metadata_warnings(text: str, where: str) -> list[str]:
    return [
        f'{where}: metadata: malformed pair "{pair}" skipped (use key=value,key2=value2)'
        for pair in malformed_metadata(text)
    ]


# fleet's options that mean nothing here: accepted from every source (a fleet.conf, unit or
# environment written for fleet must not stop fleetd), each with a warning saying why.
IGNORED_OPTIONS: dict[str, str] = {
    "enable_grpc": "fleet's gRPC link between engine and agents; here they talk only through etcd",
    "disable_watches": "fleetd always follows etcd v3 watches; there is no polling mode to switch to",
    "verify_units": "deprecated and ignored by fleet itself",
    "authorized_keys_file": "deprecated and ignored by fleet itself",
}
_IGNORED_BOOLS = ("enable_grpc", "disable_watches", "verify_units")


def ignored_warning(where: str, name: str) -> str:
    return f"{where}: {name} has no effect in fleet-py ({IGNORED_OPTIONS[name]}); ignored"


def _parse_int(text: str) -> int:
    return int(text.strip())


def _parse_port(text: str) -> int:
    port = int(text.strip())
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port (0 turns the listener off, else 1-65535)")
    return port


def _parse_str(text: str) -> str:
    return text.strip()


PARSERS: dict[str, Callable[[str], Any]] = {}
for _field in fields(Config):
    if _field.name == "metadata":
        PARSERS[_field.name] = parse_metadata
    elif _field.name in ("etcd_servers", "api_listen"):
        PARSERS[_field.name] = parse_list
    elif _field.name in ("agent_ttl", "engine_reconcile_interval", "etcd_request_timeout", "history_max_age"):
        PARSERS[_field.name] = parse_duration
    elif _field.name in ("systemd_user", "disable_engine", "stop_units_on_exit", "api_require_token"):
        PARSERS[_field.name] = parse_bool
    elif _field.name in ("token_limit", "verbosity", "history_max_events", "unit_revisions"):
        PARSERS[_field.name] = _parse_int
    elif _field.name == "peer_port":
        PARSERS[_field.name] = _parse_port
    else:
        PARSERS[_field.name] = _parse_str


# A secret and the file holding it are two spellings of one option: whichever the later
# source sets wins (a token file in fleet.conf is overridden by FLEET_API_TOKEN, and the
# other way round), and giving both in one source is an error, since neither would be
# obviously meant.
SECRET_FILES: dict[str, str] = {"api_token": "api_token_file", "etcd_password": "etcd_password_file"}
_PARTNER: dict[str, str] = {**SECRET_FILES, **{v: k for k, v in SECRET_FILES.items()}}


def _apply(config: Config, name: str, raw: str, where: str) -> Config:
    try:
        value = PARSERS[name](raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None
    if name in ("agent_ttl", "history_max_age") and value <= 0:
        raise ConfigError(f"{where}: {name}: must be positive")
    if name == "history_max_events" and value < 0:
        raise ConfigError(f"{where}: {name}: must be 0 or more (0 keeps no history)")
    if name == "unit_revisions" and value < 1:
        raise ConfigError(f"{where}: {name}: must be 1 or more (the current body is a revision too)")
    changes = {name: value}
    if name in _PARTNER:
        changes[_PARTNER[name]] = ""
    return replace(config, **changes)


def _check_secret_pairs(names: Sequence[str], source: str, spell: Callable[[str], str]) -> None:
    """One source giving a secret both inline and as a file: refuse, naming both."""
    for secret, path in SECRET_FILES.items():
        if secret in names and path in names:
            raise ConfigError(
                f"{source}: both {spell(secret)} and {spell(path)} are set",
                hint=f"keep only {spell(path)} (a file readable by root only keeps the secret out of sight)",
            )


# -- sources ------------------------------------------------------------------------------


def parse_config_file(text: str, source: str, base: Config | None = None) -> tuple[Config, list[str]]:
    """fleet.conf: ``key=value`` lines (values may be quoted), ``#``/``;`` comments."""
    config = base or Config()
    warnings: list[str] = []
    seen: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or (stripped.startswith("[") and stripped.endswith("]")):
            continue
        key, sep, value = stripped.partition("=")
        where = f"{source}:{number}"
        if not sep:
            raise ConfigError(f"{where}: expected option=value, got {stripped!r}")
        name = key.strip().replace("-", "_")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if name in IGNORED_OPTIONS:
            warnings.append(ignored_warning(where, name))
            continue
        if name not in PARSERS:
            warnings.append(f"{where}: unknown option {key.strip()!r} ignored")
            continue
        config = _apply(config, name, value, where)
        if name == "metadata":
            warnings.extend(_metadata_warnings(value, where))
        seen.append(name)
    _check_secret_pairs(seen, source, str)
    return config, warnings


def environment_variable(name: str) -> str:
    """The FLEET_* variable of option ``name`` (``api_token`` -> ``FLEET_API_TOKEN``)."""
    return f"FLEET_{name.upper()}"


def flag(name: str) -> str:
    """The command-line flag of option ``name`` (``api_token`` -> ``--api-token``)."""
    return f"--{name.replace('_', '-')}"


def apply_environment(config: Config, environ: Mapping[str, str]) -> Config:
    given = [name for name in PARSERS if environment_variable(name) in environ]
    _check_secret_pairs(given, "environment", environment_variable)
    for name in given:
        variable = environment_variable(name)
        config = _apply(config, name, environ[variable], variable)
    return config


def apply_flags(config: Config, flags: Mapping[str, str]) -> Config:
    names = {raw_name: raw_name.lstrip("-").replace("-", "_") for raw_name in flags}
    for raw_name, name in names.items():
        if name not in PARSERS:
            raise ConfigError(f"--{raw_name.lstrip('-')}: unknown option", hint="fleetd --help lists the options")
    _check_secret_pairs(list(names.values()), "command line", flag)
    for raw_name, value in flags.items():
        name = names[raw_name]
        config = _apply(config, name, value, flag(name))
    return config


def read_secret_files(config: Config, read_file: Callable[[str], str | None]) -> Config:
    """Fill ``api_token``/``etcd_password`` from their ``*_file`` options.

    The file's content minus one trailing newline (``echo secret > file`` must work) is
    the secret. A missing, unreadable or empty file is an error: starting without the
    token the operator meant to set would leave the API open.
    """
    for secret, option in SECRET_FILES.items():
        path = getattr(config, option)
        if not path:
            continue
        text = _read(read_file, path, f"{option}: cannot read {path}")
        if text is None:
            raise ConfigError(f"{option}: {path}: no such file", hint=f"create it (mode 0600) or unset {option}")
        value = text[:-1] if text.endswith("\n") else text
        value = value[:-1] if value.endswith("\r") else value
        if not value.strip():
            raise ConfigError(f"{option}: {path} is empty", hint=f"write the {secret.replace('_', ' ')} into it")
        config = replace(config, **{secret: value})
    return config


def _read(read_file: Callable[[str], str | None], path: str, what: str) -> str | None:
    """``read_file(path)``, with a failure to read turned into a one-line ConfigError."""
    try:
        return read_file(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text") from None
    except OSError as exc:
        hint = "fleetd runs as root: check the file's mode and the directory" if exc.errno == errno.EACCES else ""
        raise ConfigError(f"{what}: {exc.strerror or exc}", hint=hint) from None


def split_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``--agent-ttl=5s`` / ``--agent_ttl 5s`` / ``--systemd-user`` -> option mapping and leftovers."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--") or arg == "--":
            rest.append(arg)
            continue
        name, sep, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if not sep:
            boolean = key in _IGNORED_BOOLS or (key in PARSERS and PARSERS[key] is parse_bool)
            if boolean and (not args or args[0].startswith("--")):
                value = "true"
            elif args:
                value = args.pop(0)
            else:
                raise ConfigError(f"--{name}: needs a value")
        flags[key] = value
    return flags, rest


def load_config(
    argv: Sequence[str], environ: Mapping[str, str], read_file: Callable[[str], str | None]
) -> tuple[Config, list[str]]:
    """Build the configuration: defaults < file < environment < flags.

    ``--config PATH`` (or FLEET_CONFIG) chooses the file; a missing default file is fine,
    a missing file named explicitly is an error.
    """
    flags, rest = split_flags(argv)
    if rest:
        raise ConfigError(f"unexpected argument {rest[0]!r}")
    late_warnings: list[str] = []
    for name in IGNORED_OPTIONS:
        if environment_variable(name) in environ:
            late_warnings.append(ignored_warning(environment_variable(name), name))
        if name in flags:
            del flags[name]
            late_warnings.append(ignored_warning(flag(name), name))
    if environment_variable("metadata") in environ:
        late_warnings.extend(_metadata_warnings(environ[environment_variable("metadata")], "FLEET_METADATA"))
    if "metadata" in flags:
        late_warnings.extend(_metadata_warnings(flags["metadata"], flag("metadata")))
    path = flags.pop("config", None) or environ.get("FLEET_CONFIG") or DEFAULT_CONFIG_FILE
    explicit = path != DEFAULT_CONFIG_FILE
    text = _read(read_file, path, f"{path}: cannot read the configuration file")
    warnings: list[str] = []
    config = Config()
    if text is None:
        if explicit:
            raise ConfigError(
                f"{path}: configuration file not found",
                hint=f"give an existing file with --config or FLEET_CONFIG (the default, {DEFAULT_CONFIG_FILE}, "
                "may be absent)",
            )
    else:
        config, warnings = parse_config_file(text, path)
    config = apply_environment(config, environ)
    config = apply_flags(config, flags)
    warnings.extend(late_warnings)
    for secret, option in SECRET_FILES.items():
        if secret in flags:
            warnings.append(
                f"{flag(secret)} on the command line can be read by every user of this machine (ps); "
                f"use {option} or {environment_variable(secret)} instead"
            )
    config = read_secret_files(config, read_file)
    return config, warnings

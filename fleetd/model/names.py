"""Unit names: validation, fleetctl's mangling, templates/instances and specifiers.

The rules are systemd's (as fleet enforced them), tightened where a name reaches a file
system or a command line: a name that systemd, the agent's files or a ``systemctl``
argument could not take must be refused at submit time, not discovered later by an agent.
:func:`validate_unit_name` is the one check the API, fleetctl, the engine and the agent's
systemd adapter all apply; docs/units.md states the rules for users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetd.model.errors import UnitNameError

#: The longest unit name, in characters (names are ASCII, so also in bytes). systemd takes
#: 255, but a name also becomes part of longer file names, each of which must fit the
#: file system's 255 bytes: the adapter's temporary file ``.<name>.tmp`` (+5) and the
#: ``<name>.requires/`` directory systemd creates when another unit names this one in
#: ``RequiredBy=`` (+9, the longest such suffix). 240 keeps all of them, and most of the
#: per-unit files systemd keeps under /run/systemd/units, within the limit.
MAX_NAME_LENGTH = 240

#: Units of the host itself that a fleet unit may never be named after: a fleet unit of
#: that name would be linked over (or stopped and removed in place of) the host's own,
#: taking down the machine's fleetd, its D-Bus, its journal or systemd's own structure.
RESERVED_NAMES = frozenset(
    {
        # fleetd itself, and fleet's own unit names (machines migrating from fleet)
        "fleetd.service",
        "fleetd.socket",
        "fleet.service",
        "fleet.socket",
        # the system bus the agent drives systemd through
        "dbus.service",
        "dbus.socket",
        "dbus-broker.service",
        # systemd's own structure: PID 1's scope, the root mount and slice, the top slices
        "init.scope",
        "-.mount",
        "-.slice",
        "system.slice",
        "user.slice",
        "machine.slice",
        # the targets every boot and shutdown goes through
        "default.target",
        "sysinit.target",
        "basic.target",
        "sockets.target",
        "local-fs.target",
        "multi-user.target",
        "shutdown.target",
        "emergency.target",
        "rescue.target",
    }
)
#: Name prefixes reserved for the host: every unit systemd ships is ``systemd-*``
#: (journald, logind, udevd, tmpfiles, ...), and D-Bus activation aliases are
#: ``dbus-org.freedesktop.*``.
RESERVED_PREFIXES = ("systemd-", "dbus-org.freedesktop.")
UNIT_SUFFIXES = frozenset(
    {
        "automount",
        "busname",
        "device",
        "mount",
        "path",
        "scope",
        "service",
        "slice",
        "snapshot",
        "socket",
        "swap",
        "target",
        "timer",
    }
)
# Only these unit types may be templates or instances (contain "@").
TEMPLATE_SUFFIXES = frozenset({"path", "service", "socket", "target", "timer"})
DEFAULT_SUFFIX = "service"

#: The characters that make a unit argument or a Conflicts=/Replaces= value a glob
#: (fnmatch's wildcards). fleetctl and the scheduler must agree on which values are
#: patterns, or a literal name would be matched differently by the two.
GLOB_CHARS = frozenset("*?[")

# systemd's own characters; a backslash only as systemd-escape writes it (``\x2d``):
# fleet took such names (e.g. ``mnt-data\x2dold.mount``), and nothing else needs one
_BAD_CHAR_RE = re.compile(r"\\x[0-9a-fA-F]{2}|([^A-Za-z0-9:_.@-])")
_SPECIFIER_RE = re.compile(r"%(.)", re.DOTALL)


def _invalid(name: str, rule: str) -> UnitNameError:
    return UnitNameError(f'invalid unit name "{name}": {rule}', name)


def validate_unit_name(name: str) -> None:
    """Raise :class:`UnitNameError` naming ``name`` and the first rule it breaks."""
    if not name:
        raise UnitNameError("invalid unit name: empty", name)
    if len(name) > MAX_NAME_LENGTH:
        shown = f"{name[:40]}...{name[-20:]}"
        raise UnitNameError(
            f'invalid unit name "{shown}": longer than {MAX_NAME_LENGTH} characters ({len(name)})', name
        )
    bad = next((m for m in _BAD_CHAR_RE.finditer(name) if m.group(1)), None)
    if bad:
        raise _invalid(name, f"invalid character {bad.group(1)!r} (allowed: A-Z a-z 0-9 : _ . @ - and \\xHH escapes)")
    if name[0] in "-.":
        # "-H..." would be read as an option by systemctl; ".x" is a hidden file
        raise _invalid(name, f'must not start with "{name[0]}"')
    if "." not in name:
        raise _invalid(name, 'no type suffix (a name must contain ".", e.g. "foo.service")')
    if name.startswith("@"):
        raise _invalid(name, 'must not start with "@"')
    if name.endswith("."):
        raise _invalid(name, 'must not end with "."')
    stem, _, suffix = name.rpartition(".")
    if suffix not in UNIT_SUFFIXES:
        known = ", ".join(sorted(UNIT_SUFFIXES))
        raise _invalid(name, f'unknown type suffix ".{suffix}" (one of {known})')
    if "@" in stem and suffix not in TEMPLATE_SUFFIXES:
        allowed = ", ".join(sorted(TEMPLATE_SUFFIXES))
        raise _invalid(name, f'"@" (template or instance) is only allowed for {allowed} units')
    if is_reserved_name(name):
        raise _invalid(name, "reserved for the host's own units (see docs/units.md)")


def is_reserved_name(name: str) -> bool:
    """Whether ``name`` is one of the host's own units (:data:`RESERVED_NAMES`, or a name
    starting with one of :data:`RESERVED_PREFIXES`), which no fleet unit may take."""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def is_valid_unit_name(name: str) -> bool:
    """``True`` when :func:`validate_unit_name` accepts ``name``."""
    try:
        validate_unit_name(name)
    except UnitNameError:
        return False
    return True


def has_glob(text: str) -> bool:
    """Whether ``text`` is a glob (contains a wildcard) rather than a literal name."""
    return any(ch in GLOB_CHARS for ch in text)


def has_unit_suffix(name: str) -> bool:
    """Whether ``name`` ends in a recognised ``.<type>`` suffix."""
    _, dot, suffix = name.rpartition(".")
    return bool(dot) and suffix in UNIT_SUFFIXES


def mangle_unit_name(arg: str) -> str:
    """Turn a fleetctl argument into a unit name, as fleetctl does.

    The argument may be a path to a local file (``units/web`` or ``/x/foo.socket``): keep
    the basename, and append ``.service`` when it has no recognised suffix. The result is
    not validated here; callers validate so they can report the original argument.
    """
    base = arg.rstrip("/").rpartition("/")[2]
    if not base:
        raise UnitNameError(f'no unit name in argument "{arg}"', arg)
    return base if has_unit_suffix(base) else f"{base}.{DEFAULT_SUFFIX}"


@dataclass(frozen=True)
class UnitName:
    """A unit name split into its parts.

    ``suffix`` is the type without the dot (``service``). ``instance`` is ``None`` for a
    plain unit, ``""`` for a template (``foo@.service``) and the text after ``@`` for an
    instance; ``prefix`` is the part before ``@`` (the whole stem when there is none).
    """

    full: str
    prefix: str
    instance: str | None
    suffix: str

    @property
    def stem(self) -> str:
        """The name without its suffix (systemd's ``%N``)."""
        stem, dot, _ = self.full.rpartition(".")
        return stem if dot else self.full

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> str | None:
        """The template an instance (or template) derives from; ``None`` for plain units."""
        if self.instance is None:
            return None
        return f"{self.prefix}@.{self.suffix}"


def _split(name: str) -> UnitName:
    """Split without validating (a name with no dot is all stem)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    prefix, at, instance = stem.partition("@")
    return UnitName(name, prefix, instance if at else None, suffix)


def parse_unit_name(name: str) -> UnitName:
    """Validate ``name`` and split it into a :class:`UnitName`."""
    validate_unit_name(name)
    return _split(name)


def expand_specifiers(value: str, name: str) -> str:
    """Expand ``%n %N %p %i %%`` in ``value`` for the unit ``name``, in a single pass.

    fleet replaced them one after the other (so ``%%i`` went wrong); a single pass gives
    systemd's meaning. Unknown specifiers and a trailing lone ``%`` stay as written.
    """
    if "%" not in value:
        return value
    parts = _split(name)
    table = {
        "n": name,
        "N": parts.stem,
        "p": parts.prefix,
        "i": parts.instance or "",
        "%": "%",
    }
    return _SPECIFIER_RE.sub(lambda m: table.get(m.group(1), m.group(0)), value)

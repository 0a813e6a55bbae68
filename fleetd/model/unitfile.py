"""systemd unit files as plain data: parse, serialise, hash.

A unit file is kept as its ordered list of options, not as text: that is what fleet stores
and what its API exchanges, and it makes the hash independent of comments and layout.
Options are held grouped by section (sections in first-appearance order, options in file
order within a section) because that is the canonical serialisation fleet hashes; keeping
the same order in memory means ``parse(serialise(u)) == u`` exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from fleetd.model.errors import UnitFileError

COMMENT_PREFIXES = ("#", ";")

SHORT_HASH_LENGTH = 7


def short_hash(full_hash: str) -> str:
    """The 7-character unit hash fleetctl prints without ``--full`` and logs show; one
    definition, so what a log line names can be found in ``list-unit-files``."""
    return full_hash[:SHORT_HASH_LENGTH]


# Section names: anything printable without brackets, no surrounding whitespace.
_SECTION_RE = re.compile(r"[^\[\]\x00-\x1f\x7f]+")

# Characters no section, option name or value may hold: C0 and C1 control characters
# (line breaks among them: a value is one line) and the Unicode line and paragraph
# separators. The tab is the one exception, and only inside a value (see _text_problem).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_OR_TAB_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _text_problem(text: str, what: str, *, tab: bool) -> str | None:
    """Why ``text`` cannot be part of a unit file, or ``None``: it must encode as UTF-8
    (a lone surrogate cannot, and would break hashing and every reader later) and hold no
    control character; ``tab`` allows the tab character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid UTF-8 (lone surrogate {text[exc.start]!r} at position {exc.start})"
    bad = (_CONTROL_RE if tab else _CONTROL_OR_TAB_RE).search(text)
    if bad:
        kind = "a line break" if bad.group() in _LINE_BREAKS else "a control character"
        return f"{what} contains {kind} ({bad.group()!r} at position {bad.start()})"
    return None


def _key_problem(section: str, name: str) -> str | None:
    """Why ``section`` and ``name`` cannot head an option line (see :func:`option_problem`)."""
    problem = _text_problem(section, f"section name {section!r}", tab=False)
    if problem:
        return problem
    if not _SECTION_RE.fullmatch(section) or section.strip() != section:
        return f"invalid section name {section!r}"
    problem = _text_problem(name, f"option name {name!r} in [{section}]", tab=False)
    if problem:
        return problem
    if not name.strip() or "=" in name or name.strip() != name or name[0] in "#;[":
        return f"invalid option name {name!r} in [{section}]"
    return None


def option_problem(section: str, name: str, value: str) -> str | None:
    """Why one option cannot be stored as a unit-file line that reads back the same, or
    ``None``. The rules (docs/units.md): section and name are non-empty, without control
    characters, tabs or surrounding whitespace (the parser strips it); a section has no
    brackets; a name has no ``=`` and does not start like a comment or a section header;
    a value may hold tabs but no other control character, does not start or end with
    whitespace (the parser would strip it, changing the hash after a re-read) and does not
    end with a backslash (systemd would join the next line onto it: a value
    ``/bin/sleep 1000 \\`` followed by ``User=nobody`` would run as root while showing
    ``User=nobody``). All three must be valid UTF-8."""
    problem = _key_problem(section, name)
    if problem:
        return problem
    label = f"[{section}] {name}"
    problem = _text_problem(value, f"the value of {label}", tab=True)
    if problem:
        return problem
    if value != value.strip():
        return f"the value of {label} starts or ends with whitespace, which a unit file does not keep"
    if value.endswith("\\"):
        return f"the value of {label} ends with a backslash, which would join the next line onto it"
    return None


@dataclass(frozen=True)
class UnitOption:
    """One ``Name=Value`` line of a section; ``line`` only points errors at the source."""

    section: str
    name: str
    value: str
    line: int | None = field(default=None, compare=False)


def _canonical_order(options: Iterable[UnitOption]) -> tuple[UnitOption, ...]:
    """Group options by section, sections in first-appearance order, stable within each."""
    rank: dict[str, int] = {}
    items = tuple(options)
    for opt in items:
        rank.setdefault(opt.section, len(rank))
    return tuple(sorted(items, key=lambda o: rank[o.section]))


@dataclass(frozen=True)
class UnitFile:
    """An immutable unit file: its options in canonical order (see the module docstring)."""

    options: tuple[UnitOption, ...] = ()

    def __post_init__(self) -> None:
        # Normalise here so every construction path (parser, API, tests) compares equal
        # when, and only when, the canonical serialisation (and so the hash) is equal.
        object.__setattr__(self, "options", _canonical_order(self.options))

    def sections(self) -> list[str]:
        """Section names, unique, in first-appearance order."""
        return list(dict.fromkeys(opt.section for opt in self.options))

    def section(self, section: str) -> tuple[UnitOption, ...]:
        """All options of one section, in order."""
        return tuple(opt for opt in self.options if opt.section == section)

    def values(self, section: str, name: str) -> list[str]:
        """Every value of a (possibly repeated) option, in order."""
        return [opt.value for opt in self.options if opt.section == section and opt.name == name]

    def get(self, section: str, name: str) -> str | None:
        """The last value of an option (systemd's rule for single-valued options)."""
        found = self.values(section, name)
        return found[-1] if found else None

    @property
    def description(self) -> str | None:
        """``[Unit] Description=``, shown by ``list-unit-files --fields=desc``."""
        return self.get("Unit", "Description")

    @cached_property
    def _serialised(self) -> str:
        blocks: list[str] = []
        for name in self.sections():
            lines = [f"[{name}]"] + [f"{o.name}={o.value}" for o in self.section(name)]
            blocks.append("".join(line + "\n" for line in lines))
        return "\n".join(blocks)

    def serialize(self) -> str:
        """The canonical text: ``[Section]`` then ``Name=Value`` lines, blank line between."""
        return self._serialised

    @property
    def contents(self) -> str:
        """The canonical text as ``str`` (fleet shows this for ``fleetctl cat``)."""
        return self._serialised

    @cached_property
    def _hash(self) -> str:
        # "surrogatepass": a lone surrogate (refused on submit, but possibly stored by an
        # old client) must not make hashing raise in a reader's loop; valid text hashes as
        # plain UTF-8 either way.
        return hashlib.sha1(self._serialised.encode("utf-8", "surrogatepass")).hexdigest()

    def hash(self) -> str:
        """40-hex SHA-1 of the canonical serialisation, as fleet computes a unit's hash."""
        return self._hash

    @property
    def short_hash(self) -> str:
        return short_hash(self.hash())

    @classmethod
    def from_options(cls, options: Iterable[Mapping[str, str]]) -> UnitFile:
        """Build from the API shape ``[{"section", "name", "value"}, ...]``, validating it.

        Rejects what could not survive serialisation (line breaks, missing fields, section
        and option names that break :func:`option_problem`'s rules), so the hash stays
        meaningful. Values are checked only for line breaks: this also decodes what is
        stored, and a stored value that breaks the rest of the contract (written by an
        older client) must stay readable, listable and removable; :meth:`check` refuses it
        wherever a unit is built to be submitted or run.
        """
        result: list[UnitOption] = []
        for index, raw in enumerate(options):
            where = f"option {index}"
            try:
                section, name, value = raw["section"], raw["name"], raw["value"]
            except (KeyError, TypeError):
                raise UnitFileError(f"{where}: needs section, name and value") from None
            if not all(isinstance(part, str) for part in (section, name, value)):
                raise UnitFileError(f"{where}: section, name and value must be strings")
            problem = _key_problem(section, name)
            if problem:
                raise UnitFileError(f"{where}: {problem}")
            if "\n" in value or "\r" in value:
                raise UnitFileError(f"{where}: option {name!r} contains a line break")
            result.append(UnitOption(section, name, value))
        return cls(tuple(result))

    @cached_property
    def _problem(self) -> str | None:
        return _options_problem(self.options)

    def problem(self) -> str | None:
        """Why this file breaks the unit-file contract, or ``None``: every option passes
        :func:`option_problem`, and the rendered file parses back to exactly these options
        (so what systemd runs is what ``fleetctl cat`` shows, and the hash is stable)."""
        return self._problem

    def check(self, label: str | None = None) -> None:
        """Raise :class:`UnitFileError` (labelled with ``label``) if :meth:`problem` finds one."""
        problem = self._problem
        if problem:
            raise UnitFileError(problem, label)

    def to_options(self) -> list[dict[str, str]]:
        """The API shape: a list of ``{"section", "name", "value"}`` dicts."""
        return [{"section": o.section, "name": o.name, "value": o.value} for o in self.options]


def _check_section_name(name: str, filename: str | None, line: int | None) -> None:
    if not _SECTION_RE.fullmatch(name) or name.strip() != name:
        raise UnitFileError(f"invalid section name {name!r}", filename, line)


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Yield ``(first physical line number, joined stripped line)`` for non-comment lines.

    A trailing backslash continues onto the next line; the two parts are joined by a single
    space (systemd turns the backslash into a space; we also drop the whitespace around it
    so the result does not depend on indentation). Comment lines inside a continuation are
    skipped, as systemd does; a blank line ends it.
    """
    pending: str | None = None
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if stripped.startswith(COMMENT_PREFIXES):
            continue
        if pending is None:
            start, joined = number, stripped
        else:
            joined = " ".join(part for part in (pending, stripped) if part)
        if stripped.endswith("\\"):
            pending = joined[:-1].rstrip()
            continue
        pending = None
        if joined:
            yield start, joined
    if pending:
        yield start, pending


def parse_unit_file(text: str, filename: str | None = None) -> UnitFile:
    """Parse systemd INI text into a :class:`UnitFile`.

    Repeated keys are separate options in order; ``Key=`` is an empty value. Anything
    systemd would refuse is a :class:`UnitFileError` pointing at the file and line, so a
    bad file is refused before it reaches the cluster.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    section: str | None = None
    options: list[UnitOption] = []
    for number, line in _logical_lines(text):
        if line.startswith("["):
            if not line.endswith("]"):
                raise UnitFileError(f"unterminated section header {line!r}", filename, number)
            section = line[1:-1]
            _check_section_name(section, filename, number)
            continue
        if section is None:
            raise UnitFileError(f"option {line!r} before any [Section] header", filename, number)
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitFileError(f"line {line!r} is not Key=Value", filename, number)
        key = key.strip()
        if not key:
            raise UnitFileError(f"empty option name in {line!r}", filename, number)
        options.append(UnitOption(section, key, value.strip(), number))
    return UnitFile(tuple(options))


@lru_cache(maxsize=8192)
def _options_problem(options: tuple[UnitOption, ...]) -> str | None:
    """:meth:`UnitFile.problem`, remembered by the options themselves: a cluster holds many
    units with the same body (a template's instances), and the engine, the agents and
    every submit check each one. Re-parsing costs tens of microseconds a unit; a burst of
    ten thousand units would otherwise pay it ten thousand times."""
    for opt in options:
        problem = option_problem(opt.section, opt.name, opt.value)
        if problem:
            return problem
    file = UnitFile(options)
    try:
        again = parse_unit_file(file._serialised)
    except UnitFileError as exc:
        return f"the unit file would not parse back: {exc}"
    if again != file:
        diff = next(
            (f"[{a.section}] {a.name}" for a, b in zip(options, again.options, strict=False) if a != b),
            f"{len(options)} options became {len(again.options)}",
        )
        return f"the unit file would not read back as sent ({diff})"
    return None

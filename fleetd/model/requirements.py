"""The ``[X-Fleet]`` section: where a unit may run, parsed once and validated up front.

Validation happens at submit time so a unit that can never be scheduled (contradictory
options, malformed metadata) is refused with a message pointing at its line, instead of
sitting unplaced in the cluster as it did in fleet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetd.model.errors import UnitFileError
from fleetd.model.names import expand_specifiers, parse_unit_name
from fleetd.model.unitfile import UnitFile
from fleetd.model.words import UNIT_FILE_BOOL, parse_bool

SECTION = "X-Fleet"

# Key as written (including fleet's deprecated aliases) -> canonical option.
OPTION_KEYS: dict[str, str] = {
    "MachineID": "MachineID",
    "X-ConditionMachineID": "MachineID",
    "X-ConditionMachineBootID": "MachineBootID",
    "MachineOf": "MachineOf",
    "X-ConditionMachineOf": "MachineOf",
    "MachineMetadata": "MachineMetadata",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "Conflicts": "Conflicts",
    "X-Conflicts": "Conflicts",
    "Global": "Global",
    "Replaces": "Replaces",
}

# Pairs of canonical options that may not appear together.
EXCLUSIVE: tuple[tuple[str, str], ...] = (
    ("MachineID", "MachineOf"),
    ("MachineID", "Conflicts"),
    ("MachineID", "Global"),
    ("MachineID", "Replaces"),
    ("Global", "MachineOf"),
    ("Global", "Replaces"),
    ("Conflicts", "Replaces"),
)

_HEX_RE = re.compile(r"[0-9a-fA-F]{1,32}")
_SPECIFIER_RE = re.compile(r"%(.)", re.DOTALL)
# Specifiers whose value differs from one instance of a template to the next.
_INSTANCE_SPECIFIERS = frozenset("nNi")


def has_instance_specifier(text: str) -> bool:
    """Whether ``text`` holds ``%i``, ``%n`` or ``%N`` (not a literal ``%%i``)."""
    return any(m.group(1) in _INSTANCE_SPECIFIERS for m in _SPECIFIER_RE.finditer(text))


Metadata = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Requirements:
    """What a unit asks of the machine it runs on; the empty default asks nothing.

    ``metadata`` is ``((key, (allowed values...)), ...)`` in first-appearance order:
    hashable, and the values of one key are alternatives while keys must all match.
    """

    machine_id: str | None = None
    machine_of: tuple[str, ...] = ()
    metadata: Metadata = ()
    conflicts: tuple[str, ...] = ()
    global_: bool = False
    replaces: tuple[str, ...] = ()
    machine_boot_id: str | None = None  # deprecated X-ConditionMachineBootID, kept as given

    @property
    def metadata_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.metadata)

    def conflicts_with(self, other_name: str) -> bool:
        """Whether a unit named ``other_name`` matches one of this unit's Conflicts globs."""
        return any(fnmatchcase(other_name, glob) for glob in self.conflicts)

    def replaces_unit(self, name: str) -> bool:
        """Whether a unit named ``name`` matches one of this unit's Replaces globs."""
        return any(fnmatchcase(name, glob) for glob in self.replaces)

    def metadata_matches(self, machine_metadata: Mapping[str, str]) -> bool:
        """Every required key present with one of its allowed values (OR within, AND across)."""
        return all(machine_metadata.get(key) in allowed for key, allowed in self.metadata)


def split_words(value: str) -> list[str]:
    """Split a value into words the way fleet reads multi-value options.

    Words are separated by whitespace; a double- or single-quoted part keeps its spaces and
    loses its quotes, and may sit inside a word (``region="us east"``). A quoted empty
    string is an (empty) word. Raises ``ValueError`` on an unterminated quote.
    """
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quote: str | None = None
    for ch in value:
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                current.append(ch)
        elif ch in "\"'":
            quote, in_word = ch, True
        elif ch.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(ch)
            in_word = True
    if quote is not None:
        raise ValueError(f"unterminated {quote} quote")
    if in_word:
        words.append("".join(current))
    return words


@dataclass(frozen=True)
class _Word:
    """One value word with where it came from, for error messages."""

    text: str
    key: str  # the option key as written, e.g. "X-Conflicts"
    line: int | None
    # A template's word holding an instance specifier: kept as written and not checked,
    # since only each instance knows its value (checked when the instance is built).
    deferred: bool = False


def _later(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b)


class _Parser:
    """Collects the words of each canonical option, then builds and checks Requirements."""

    def __init__(self, unit: UnitFile, name: str, label: str) -> None:
        self.label = label
        self.words: dict[str, list[_Word]] = {}
        self.warnings: list[str] = []
        self.global_word: _Word | None = None
        self.global_: bool = False
        is_template = parse_unit_name(name).is_template
        for opt in unit.section(SECTION):
            canonical = OPTION_KEYS.get(opt.name)
            if canonical is None:
                where = f"{label}:{opt.line}" if opt.line is not None else label
                self.warnings.append(f'{where}: unknown [{SECTION}] option "{opt.name}" ignored')
                continue
            try:
                texts = split_words(opt.value)
            except ValueError as exc:
                raise self.error(f"{opt.name}: {exc}", opt.line) from None
            words = [
                _Word(t, opt.name, opt.line, deferred=True)
                if is_template and has_instance_specifier(t)
                else _Word(expand_specifiers(t, name), opt.name, opt.line)
                for t in texts
            ]
            if canonical == "Global":
                self.read_global(words, opt.name, opt.line)
            else:
                self.words.setdefault(canonical, []).extend(words)

    def error(self, message: str, line: int | None) -> UnitFileError:
        return UnitFileError(message, self.label, line)

    def read_global(self, words: list[_Word], key: str, line: int | None) -> None:
        if len(words) != 1:
            raise self.error(f"{key} takes exactly one boolean value, got {len(words)}", line)
        if words[0].deferred:
            self.global_, self.global_word = False, None  # each instance decides
            return
        try:
            self.global_ = parse_bool(words[0].text, UNIT_FILE_BOOL)
        except ValueError as exc:
            raise self.error(f"{key}: {exc}", line) from None
        self.global_word = words[0]

    def single(self, canonical: str) -> _Word | None:
        words = self.words.get(canonical, [])
        if len(words) > 1:
            got = ", ".join(repr(w.text) for w in words)
            raise self.error(f"{words[1].key} takes a single value; got {got}", words[1].line)
        return words[0] if words else None

    def globs(self, canonical: str) -> list[_Word]:
        words = self.words.get(canonical, [])
        for word in words:
            if not word.text and not word.deferred:
                raise self.error(f"{word.key}: empty value", word.line)
        return words

    def machine_id(self) -> _Word | None:
        word = self.single("MachineID")
        if word is not None and not word.deferred and not _HEX_RE.fullmatch(word.text):
            raise self.error(
                f'{word.key} "{word.text}" is not a machine ID (up to 32 hexadecimal digits)',
                word.line,
            )
        return word

    def metadata(self) -> Metadata:
        wanted: dict[str, list[str]] = {}
        for word in self.words.get("MachineMetadata", []):
            key, sep, value = word.text.partition("=")
            if not sep or "=" in value or not key or not value:
                if word.deferred:
                    continue  # e.g. "%i" alone: only an instance can say
                message = f'{word.key}: malformed value "{word.text}" (want key=value)'
                raise self.error(message, word.line)
            allowed = wanted.setdefault(key, [])
            if value not in allowed:
                allowed.append(value)
        return tuple((key, tuple(values)) for key, values in wanted.items())

    def check_combinations(self, present: dict[str, _Word]) -> None:
        for first, second in EXCLUSIVE:
            a, b = present.get(first), present.get(second)
            if a is not None and b is not None:
                raise self.error(f"{a.key} cannot be combined with {b.key}", _later(a.line, b.line))

    def check_peers(self, peers: list[_Word], globs: list[_Word]) -> None:
        for peer in peers:
            for glob in globs:
                if peer.deferred or glob.deferred:
                    continue
                if fnmatchcase(peer.text, glob.text):
                    raise self.error(
                        f'{peer.key} "{peer.text}" is matched by this unit\'s own {glob.key} "{glob.text}"',
                        _later(peer.line, glob.line),
                    )

    def build(self) -> Requirements:
        machine_id = self.machine_id()
        boot_id = self.single("MachineBootID")
        peers = self.globs("MachineOf")
        conflicts = self.globs("Conflicts")
        replaces = self.globs("Replaces")
        metadata = self.metadata()
        present = {
            key: words[0]
            for key, words in (
                ("MachineID", [machine_id] if machine_id else []),
                ("MachineOf", peers),
                ("Conflicts", conflicts),
                ("Replaces", replaces),
                ("Global", [self.global_word] if self.global_ and self.global_word else []),
            )
            if words
        }
        self.check_combinations(present)
        self.check_peers(peers, conflicts + replaces)
        return Requirements(
            machine_id=(machine_id.text if machine_id.deferred else machine_id.text.lower()) if machine_id else None,
            machine_of=tuple(w.text for w in peers),
            metadata=metadata,
            conflicts=tuple(w.text for w in conflicts),
            global_=self.global_,
            replaces=tuple(w.text for w in replaces),
            machine_boot_id=boot_id.text if boot_id else None,
        )


def parse_requirements(unit: UnitFile, name: str, filename: str | None = None) -> tuple[Requirements, list[str]]:
    """Read and validate the ``[X-Fleet]`` section of ``unit`` (named ``name``).

    Specifiers are expanded with ``name``, so an instance ``web@2.service`` gets its own
    values from the template's body. A template (``web@.service``) keeps a value holding
    ``%i``, ``%n`` or ``%N`` as written and does not check it (``MachineMetadata=host=%i``
    would read as ``host=`` there): each instance is checked with its own name when it is
    created, and a template is never scheduled. Returns the requirements and warnings (unknown keys);
    raises :class:`UnitFileError` (labelled ``filename`` or else ``name``) for anything
    that makes the unit unschedulable or ambiguous.
    """
    parser = _Parser(unit, name, filename or name)
    return parser.build(), parser.warnings

"""Unit-file parsing, canonical serialisation and hashing (fleetd.model.unitfile)."""

from __future__ import annotations

import hashlib
import pickle
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.model.errors import UnitFileError
from fleetd.model.unitfile import UnitFile, UnitOption, parse_unit_file


def opts(unit: UnitFile) -> list[tuple[str, str, str]]:
    return [(o.section, o.name, o.value) for o in unit.options]


PARSE_CASES = [
    ("empty", "", []),
    ("only comments", "# a\n; b\n\n   # indented\n", []),
    ("basic", "[Unit]\nDescription=Hello\n", [("Unit", "Description", "Hello")]),
    (
        "comments and blank lines",
        "# top\n[Unit]\n; semi\nDescription=x\n\n# between\n[Service]\nExecStart=/bin/true\n",
        [("Unit", "Description", "x"), ("Service", "ExecStart", "/bin/true")],
    ),
    (
        "whitespace around key and value stripped",
        "[Service]\n  ExecStart =   /bin/sleep 1   \n\tUser\t=\tcore\t\n",
        [("Service", "ExecStart", "/bin/sleep 1"), ("Service", "User", "core")],
    ),
    ("empty value", "[Service]\nEnvironment=\n", [("Service", "Environment", "")]),
    ("value keeps later equals", "[Service]\nEnvironment=A=B=C\n", [("Service", "Environment", "A=B=C")]),
    ("hash inside value is not a comment", "[Unit]\nDescription=a # b ; c\n", [("Unit", "Description", "a # b ; c")]),
    (
        "repeated keys kept in order",
        "[Service]\nExecStartPre=/a\nExecStartPre=/b\nExecStartPre=/a\n",
        [("Service", "ExecStartPre", "/a"), ("Service", "ExecStartPre", "/b"), ("Service", "ExecStartPre", "/a")],
    ),
    (
        "continuation joined with one space",
        "[Service]\nExecStart=/bin/echo \\\n    hello \\\n  world\n",
        [("Service", "ExecStart", "/bin/echo hello world")],
    ),
    ("continuation without space", "[Service]\nExecStart=a\\\nb\n", [("Service", "ExecStart", "a b")]),
    (
        "comment inside continuation skipped",
        "[Service]\nExecStart=/bin/echo \\\n# not me\n; nor me\n  done\nUser=core\n",
        [("Service", "ExecStart", "/bin/echo done"), ("Service", "User", "core")],
    ),
    (
        "blank line ends continuation",
        "[Service]\nExecStart=a \\\n\nUser=core\n",
        [("Service", "ExecStart", "a"), ("Service", "User", "core")],
    ),
    ("continuation at end of file", "[Service]\nExecStart=a \\", [("Service", "ExecStart", "a")]),
    ("CRLF line endings", "[Unit]\r\nDescription=x\r\n", [("Unit", "Description", "x")]),
    ("byte order mark", "\ufeff[Unit]\nDescription=x\n", [("Unit", "Description", "x")]),
    ("no final newline", "[Unit]\nDescription=x", [("Unit", "Description", "x")]),
    ("section name with dash and space", "[X-Fleet]\nGlobal=true\n", [("X-Fleet", "Global", "true")]),
    (
        "interleaved sections grouped in first-appearance order",
        "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
        [("Unit", "A", "1"), ("Unit", "C", "3"), ("Service", "B", "2")],
    ),
    ("section without options vanishes", "[Unit]\n[Service]\nA=1\n", [("Service", "A", "1")]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert opts(parse_unit_file(text)) == expected


def test_parse_records_line_of_each_option() -> None:
    unit = parse_unit_file("# c\n[Unit]\n\nA=1\nB=x \\\n y\nC=3\n")
    assert [(o.name, o.line) for o in unit.options] == [("A", 4), ("B", 5), ("C", 7)]


ERROR_CASES = [
    ("option before section", "# c\nA=1\n", 2, "before any [Section]"),
    ("line without equals", "[Unit]\nDescription=x\njunk\n", 3, "not Key=Value"),
    ("empty key", "[Unit]\n\n  = value\n", 3, "empty option name"),
    ("unterminated header", "[Unit]\nA=1\n[Service\nB=2\n", 3, "unterminated section header"),
    ("text after header", "[Unit] extra\n", 1, "unterminated section header"),
    ("empty section name", "[]\nA=1\n", 1, "invalid section name"),
    ("bracket in section name", "[a]b]\n", 1, "invalid section name"),
    ("padded section name", "[ Unit ]\n", 1, "invalid section name"),
    ("error in continued line points at its start", "[Unit]\nfoo \\\nbar\n", 2, "not Key=Value"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_parse_errors(text: str, line: int, fragment: str) -> None:
    with pytest.raises(UnitFileError) as info:
        parse_unit_file(text, "web.service")
    err = info.value
    assert (err.file, err.line) == ("web.service", line)
    assert fragment in err.message
    assert str(err).startswith(f"web.service:{line}: ")


def test_error_str_forms() -> None:
    assert str(UnitFileError("bad", "web.service", 12)) == "web.service:12: bad"
    assert str(UnitFileError("bad", "web.service")) == "web.service: bad"
    assert str(UnitFileError("bad", None, 3)) == "line 3: bad"
    assert str(UnitFileError("bad")) == "bad"
    assert isinstance(UnitFileError("bad"), ValueError)
    copy = pickle.loads(pickle.dumps(UnitFileError("bad", "f", 1)))
    assert (copy.message, copy.file, copy.line) == ("bad", "f", 1)


def test_serialize_canonical_form() -> None:
    unit = parse_unit_file("[Unit]\nDescription = x\n# c\n[Service]\nExecStart=/a\nExecStart=/b\n\n\n")
    assert unit.serialize() == "[Unit]\nDescription=x\n\n[Service]\nExecStart=/a\nExecStart=/b\n"
    assert unit.contents == unit.serialize()
    assert UnitFile().serialize() == ""


def test_helpers() -> None:
    unit = parse_unit_file("[Unit]\nDescription=one\nDescription=two\n[X-Fleet]\nConflicts=a\n[Unit]\nAfter=b\n")
    assert unit.sections() == ["Unit", "X-Fleet"]
    assert unit.values("Unit", "Description") == ["one", "two"]
    assert unit.get("Unit", "Description") == "two"
    assert unit.description == "two"
    assert unit.get("Unit", "Missing") is None
    assert unit.values("Service", "ExecStart") == []
    assert [o.name for o in unit.section("Unit")] == ["Description", "Description", "After"]
    assert UnitFile().description is None


def test_hash_is_sha1_of_canonical_text() -> None:
    unit = parse_unit_file("[Unit]\nDescription=x\n")
    assert unit.hash() == hashlib.sha1(b"[Unit]\nDescription=x\n").hexdigest()
    assert len(unit.hash()) == 40
    assert unit.short_hash == unit.hash()[:7]


def test_hash_ignores_formatting() -> None:
    a = parse_unit_file("[Unit]\nDescription=x y\n[Service]\nExecStart=/bin/true\n")
    b = parse_unit_file(
        "# comment\n\n[Unit]\n  Description =  x \\\n  ; c\n   y\n\n; c\n[Service]\n\tExecStart\t=/bin/true"
    )
    assert a == b
    assert a.hash() == b.hash()


def test_hash_depends_on_option_order() -> None:
    a = parse_unit_file("[Service]\nExecStartPre=/a\nExecStartPre=/b\n")
    b = parse_unit_file("[Service]\nExecStartPre=/b\nExecStartPre=/a\n")
    assert a != b and a.hash() != b.hash()
    c = parse_unit_file("[Unit]\nA=1\n[Service]\nB=1\n")
    d = parse_unit_file("[Service]\nB=1\n[Unit]\nA=1\n")
    assert c.hash() != d.hash()


def test_equality_ignores_line_numbers() -> None:
    assert UnitOption("Unit", "A", "1", line=3) == UnitOption("Unit", "A", "1", line=9)
    assert parse_unit_file("\n\n[Unit]\nA=1\n") == parse_unit_file("[Unit]\nA=1\n")


def test_api_options_round_trip() -> None:
    shape = [
        {"section": "Unit", "name": "Description", "value": "x"},
        {"section": "X-Fleet", "name": "Global", "value": "true"},
    ]
    unit = UnitFile.from_options(shape)
    assert unit.to_options() == shape
    assert unit == parse_unit_file(unit.serialize())


@pytest.mark.parametrize(
    "bad",
    [
        [{"section": "Unit", "name": "A"}],
        ["not a dict"],
        [{"section": "Unit", "name": "A", "value": 1}],
        [{"section": "", "name": "A", "value": "1"}],
        [{"section": "Un]it", "name": "A", "value": "1"}],
        [{"section": "Unit", "name": "", "value": "1"}],
        [{"section": "Unit", "name": "A=B", "value": "1"}],
        [{"section": "Unit", "name": "#A", "value": "1"}],
        [{"section": "Unit", "name": "A", "value": "1\nB=2"}],
    ],
)
def test_api_options_rejected(bad: list[dict[str, object]]) -> None:
    with pytest.raises(UnitFileError):
        UnitFile.from_options(bad)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------

_NAME_CHARS = string.ascii_letters + string.digits + "-_"
sections = st.text(_NAME_CHARS, min_size=1, max_size=8)
keys = st.text(_NAME_CHARS, min_size=1, max_size=12)
values = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30).filter(
    lambda v: v == v.strip() and not v.endswith("\\")
)
option_lists = st.lists(st.builds(UnitOption, sections, keys, values), max_size=12)


@settings(max_examples=150, deadline=None)
@given(option_lists)
def test_serialise_parse_round_trip(options: list[UnitOption]) -> None:
    unit = UnitFile(tuple(options))
    again = parse_unit_file(unit.serialize())
    assert again.options == unit.options
    assert again.hash() == unit.hash()
    assert again.serialize() == unit.serialize()


@settings(max_examples=100, deadline=None)
@given(option_lists)
def test_api_shape_round_trip(options: list[UnitOption]) -> None:
    unit = UnitFile(tuple(options))
    assert UnitFile.from_options(unit.to_options()) == unit


@settings(max_examples=100, deadline=None)
@given(option_lists, st.sampled_from(["\n", "\r\n"]), st.sampled_from(["", "  ", "\t"]))
def test_hash_independent_of_layout(options: list[UnitOption], newline: str, pad: str) -> None:
    unit = UnitFile(tuple(options))
    lines = []
    for name in unit.sections():
        lines += ["# a comment", f"[{name}]", "; another", ""]
        lines += [f"{pad}{o.name}{pad}={pad}{o.value}{pad}" for o in unit.section(name)]
    assert parse_unit_file(newline.join(lines)).hash() == unit.hash()

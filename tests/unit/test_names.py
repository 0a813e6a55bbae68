"""Unit names: validation, mangling, templates/instances, specifiers (fleetd.model.names)."""

from __future__ import annotations

import pytest

from fleetd.model.errors import UnitNameError
from fleetd.model.names import (
    MAX_NAME_LENGTH,
    RESERVED_NAMES,
    UnitName,
    expand_specifiers,
    is_valid_unit_name,
    mangle_unit_name,
    parse_unit_name,
    validate_unit_name,
)

VALID = [
    "web.service",
    "a.service",
    "web-1_x:y.service",
    "foo.bar.service",
    "foo@.service",
    "foo@bar.service",
    "foo@bar.baz.service",
    "foo@1.socket",
    "foo@.timer",
    "foo@x.path",
    "multi-user@x.target",
    "home.mount",
    "dev-sda.device",
    "x.automount",
    "x.busname",
    "x.scope",
    "x.slice",
    "x.snapshot",
    "x.swap",
    "x" * 232 + ".service",  # exactly MAX_NAME_LENGTH (240)
    "a-.service",
    "x.-y.service",
    "systemd.service",  # only "systemd-*" is reserved
    "my-systemd-thing.service",
    "dbus-monitor.service",
    "fleetd-helper.service",
    "fleetd@1.service",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    validate_unit_name(name)
    assert is_valid_unit_name(name)


INVALID = [
    ("", "empty"),
    ("x" * 233 + ".service", "longer than 240 characters (241)"),
    ("x" * 243 + ".service", "longer than 240 characters (251)"),  # ".<name>.tmp" would be 256 bytes
    ("-Hroot@somehost.service", 'must not start with "-"'),
    ("--help.service", 'must not start with "-"'),
    ("-.mount", 'must not start with "-"'),
    ("-.slice", 'must not start with "-"'),
    (".hidden.service", 'must not start with "."'),
    ("web app.service", "invalid character ' '"),
    ("web/app.service", "invalid character '/'"),
    ("wéb.service", "invalid character 'é'"),
    ("web%i.service", "invalid character '%'"),
    ("web", 'must contain "."'),
    ("@foo.service", 'must not start with "@"'),
    ("web.service.", 'must not end with "."'),
    ("web.txt", 'unknown type suffix ".txt"'),
    ("web.Service", 'unknown type suffix ".Service"'),
    (".service", 'must not start with "."'),
    ("foo@bar.mount", '"@"'),
    ("foo@.device", '"@"'),
    ("foo@x.slice", '"@"'),
    *((name, "reserved for the host") for name in sorted(RESERVED_NAMES) if not name.startswith("-")),
    ("systemd-journald.service", "reserved for the host"),
    ("systemd-journald.socket", "reserved for the host"),
    ("systemd-fsck@x.service", "reserved for the host"),
    ("dbus-org.freedesktop.login1.service", "reserved for the host"),
]


@pytest.mark.parametrize(("name", "reason"), INVALID)
def test_invalid_names(name: str, reason: str) -> None:
    with pytest.raises(UnitNameError) as info:
        validate_unit_name(name)
    assert reason in str(info.value)
    if name and len(name) <= MAX_NAME_LENGTH:
        assert f'"{name}"' in str(info.value)
    assert info.value.name == name
    assert not is_valid_unit_name(name)


MANGLE = [
    ("web", "web.service"),
    ("web.service", "web.service"),
    ("/path/to/foo.socket", "foo.socket"),
    ("units/web", "web.service"),
    ("units/web/", "web.service"),
    ("foo@1", "foo@1.service"),
    ("foo@", "foo@.service"),
    ("foo@.service", "foo@.service"),
    ("db.timer", "db.timer"),
    ("app.v2", "app.v2.service"),
    ("./x.target", "x.target"),
]


@pytest.mark.parametrize(("arg", "expected"), MANGLE)
def test_mangle(arg: str, expected: str) -> None:
    assert mangle_unit_name(arg) == expected


@pytest.mark.parametrize("arg", ["", "/", "///"])
def test_mangle_rejects_empty(arg: str) -> None:
    with pytest.raises(UnitNameError):
        mangle_unit_name(arg)


PARTS = [
    # name, prefix, instance, suffix, stem, is_template, is_instance, template
    ("web.service", "web", None, "service", "web", False, False, None),
    ("foo@.service", "foo", "", "service", "foo@", True, False, "foo@.service"),
    ("foo@bar.service", "foo", "bar", "service", "foo@bar", False, True, "foo@.service"),
    ("foo@a.b.socket", "foo", "a.b", "socket", "foo@a.b", False, True, "foo@.socket"),
    ("a.b.service", "a.b", None, "service", "a.b", False, False, None),
]


@pytest.mark.parametrize(
    ("name", "prefix", "instance", "suffix", "stem", "is_template", "is_instance", "template"), PARTS
)
def test_parse_unit_name(
    name: str,
    prefix: str,
    instance: str | None,
    suffix: str,
    stem: str,
    is_template: bool,
    is_instance: bool,
    template: str | None,
) -> None:
    parts = parse_unit_name(name)
    assert parts == UnitName(name, prefix, instance, suffix)
    assert parts.stem == stem
    assert parts.is_template is is_template
    assert parts.is_instance is is_instance
    assert parts.template == template


def test_parse_unit_name_validates() -> None:
    with pytest.raises(UnitNameError):
        parse_unit_name("nope")


SPECIFIERS = [
    ("%n", "foo@bar.service", "foo@bar.service"),
    ("%N", "foo@bar.service", "foo@bar"),
    ("%p", "foo@bar.service", "foo"),
    ("%i", "foo@bar.service", "bar"),
    ("%p", "web.service", "web"),
    ("%N", "web.service", "web"),
    ("%i", "web.service", ""),
    ("%i", "foo@.service", ""),
    ("%p", "a.b.service", "a.b"),
    ("db@%i.service", "web@2.service", "db@2.service"),
    ("%p-%i on %n", "app@x.service", "app-x on app@x.service"),
    ("100%%", "web.service", "100%"),
    ("%%i", "foo@bar.service", "%i"),
    ("%%%i", "foo@bar.service", "%bar"),
    ("%x %H", "web.service", "%x %H"),
    ("trailing %", "web.service", "trailing %"),
    ("no specifiers", "web.service", "no specifiers"),
]


@pytest.mark.parametrize(("value", "name", "expected"), SPECIFIERS)
def test_expand_specifiers(value: str, name: str, expected: str) -> None:
    assert expand_specifiers(value, name) == expected


def test_systemd_escapes_are_accepted_and_no_other_backslash() -> None:
    # what systemd-escape writes (fleet took such names); any other backslash is refused
    for name in (r"mnt-data\x2dold.mount", r"web@a\x2fb.service", r"\x2dleading.service"):
        assert is_valid_unit_name(name), name
    for name in (r"a\b.service", r"a\x2.service", "a\\.service"):
        with pytest.raises(UnitNameError, match="invalid character") as refused:
            validate_unit_name(name)
        assert "\\xHH escapes" in str(refused.value)

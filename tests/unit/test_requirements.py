"""The [X-Fleet] section (fleetd.model.requirements)."""

from __future__ import annotations

import pytest

from fleetd.model.errors import UnitFileError
from fleetd.model.requirements import Requirements, parse_requirements, split_words
from fleetd.model.unitfile import UnitFile, parse_unit_file

MID = "0123456789abcdef0123456789abcdef"


def req(body: str, name: str = "web.service") -> Requirements:
    requirements, warnings = parse_requirements(parse_unit_file("[X-Fleet]\n" + body, name), name)
    assert warnings == []
    return requirements


def error(body: str, name: str = "web.service") -> UnitFileError:
    with pytest.raises(UnitFileError) as info:
        parse_requirements(parse_unit_file("[X-Fleet]\n" + body, name), name)
    return info.value


def test_no_section_means_no_requirements() -> None:
    assert parse_requirements(parse_unit_file("[Service]\nExecStart=/bin/true\n"), "a.service") == (
        Requirements(),
        [],
    )
    assert parse_requirements(UnitFile(), "a.service") == (Requirements(), [])


OPTION_CASES = [
    ("MachineID", f"MachineID={MID}", Requirements(machine_id=MID)),
    ("X-ConditionMachineID", f"X-ConditionMachineID={MID}", Requirements(machine_id=MID)),
    ("MachineID prefix", "MachineID=0123abcd", Requirements(machine_id="0123abcd")),
    ("MachineID lower-cased", "MachineID=ABCDEF12", Requirements(machine_id="abcdef12")),
    ("X-ConditionMachineBootID", "X-ConditionMachineBootID=b00t", Requirements(machine_boot_id="b00t")),
    ("MachineOf", "MachineOf=db.service", Requirements(machine_of=("db.service",))),
    ("X-ConditionMachineOf", "X-ConditionMachineOf=db.service", Requirements(machine_of=("db.service",))),
    ("MachineMetadata", "MachineMetadata=region=us", Requirements(metadata=(("region", ("us",)),))),
    (
        "X-ConditionMachineMetadata",
        "X-ConditionMachineMetadata=region=us",
        Requirements(metadata=(("region", ("us",)),)),
    ),
    ("Conflicts", "Conflicts=web*.service", Requirements(conflicts=("web*.service",))),
    ("X-Conflicts", "X-Conflicts=web*.service", Requirements(conflicts=("web*.service",))),
    ("Global", "Global=true", Requirements(global_=True)),
    ("Replaces", "Replaces=old.service", Requirements(replaces=("old.service",))),
    ("empty values ignored", "Conflicts=\nMachineOf=\nMachineID=\n", Requirements()),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_each_option(body: str, expected: Requirements) -> None:
    assert req(body) == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("a b", ["a", "b"]),
        ("  a\t b  ", ["a", "b"]),
        ('"region=us-east" "disk=ssd"', ["region=us-east", "disk=ssd"]),
        ("'a b' c", ["a b", "c"]),
        ('region="us east"', ["region=us east"]),
        ('"it\'s"', ["it's"]),
        ('""', [""]),
        ("", []),
    ],
)
def test_split_words(value: str, words: list[str]) -> None:
    assert split_words(value) == words


def test_unterminated_quote_is_an_error() -> None:
    err = error('Conflicts=a.service "b.service\n')
    assert err.line == 2 and "unterminated" in err.message


def test_multi_value_and_repeated_lines() -> None:
    r = req(
        'MachineMetadata="region=us-east" "disk=ssd"\n'
        "Conflicts=a*.service b*.service\n"
        "X-Conflicts=c?.service\n"
        "MachineOf=x.service y.service\n"
        "MachineOf=z.service\n"
        "MachineMetadata=region=us-west\n"
    )
    assert r.metadata == (("region", ("us-east", "us-west")), ("disk", ("ssd",)))
    assert r.metadata_dict == {"region": ("us-east", "us-west"), "disk": ("ssd",)}
    assert r.conflicts == ("a*.service", "b*.service", "c?.service")
    assert r.machine_of == ("x.service", "y.service", "z.service")


def test_duplicate_metadata_values_collapse() -> None:
    assert req("MachineMetadata=a=1 a=1\nMachineMetadata=a=1\n").metadata == (("a", ("1",)),)


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ("apache.service", True),
        ("apache2.service", False),
        ("db1.service", True),
        ("db10.service", False),
        ("cache-a.service", True),
        ("cache-c.service", False),
        ("Apache.service", False),  # case-sensitive
        ("other.service", False),
    ],
)
def test_conflict_globs(other: str, expected: bool) -> None:
    r = req("Conflicts=apache.service db?.service cache-[ab].service\n")
    assert r.conflicts_with(other) is expected


def test_replaces_globs() -> None:
    r = req("Replaces=old-*.service\n")
    assert r.replaces_unit("old-web.service")
    assert not r.replaces_unit("new-web.service")
    assert not Requirements().replaces_unit("x.service")
    assert not Requirements().conflicts_with("x.service")


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({"region": "us-east", "disk": "ssd"}, True),
        ({"region": "us-west", "disk": "ssd", "extra": "x"}, True),
        ({"region": "eu", "disk": "ssd"}, False),
        ({"region": "us-east", "disk": "hdd"}, False),
        ({"region": "us-east"}, False),
        ({}, False),
    ],
)
def test_metadata_or_within_and_across(machine: dict[str, str], expected: bool) -> None:
    r = req("MachineMetadata=region=us-east region=us-west\nMachineMetadata=disk=ssd\n")
    assert r.metadata_matches(machine) is expected


def test_no_metadata_matches_any_machine() -> None:
    assert Requirements().metadata_matches({})
    assert Requirements().metadata_matches({"a": "b"})


def test_specifiers_for_an_instance() -> None:
    unit = parse_unit_file(
        "[X-Fleet]\nMachineMetadata=shard=%i\nConflicts=%p@*.service\nMachineOf=db@%i.service\n"
        "Replaces=old-%N.service\n"
    )
    # Conflicts and Replaces together are rejected, so check them on two units.
    r = parse_requirements(UnitFile(unit.options[:3]), "web@3.service")[0]
    assert r.metadata == (("shard", ("3",)),)
    assert r.conflicts == ("web@*.service",)
    assert r.machine_of == ("db@3.service",)
    r2 = parse_requirements(UnitFile(unit.options[3:]), "web@3.service")[0]
    assert r2.replaces == ("old-web@3.service",)
    assert r.metadata_matches({"shard": "3"}) and not r.metadata_matches({"shard": "4"})


def test_specifier_expansion_uses_the_given_name() -> None:
    unit = parse_unit_file("[X-Fleet]\nMachineMetadata=role=%p n=%n\n")
    r = parse_requirements(unit, "api.service")[0]
    assert r.metadata == (("role", ("api",)), ("n", ("api.service",)))


@pytest.mark.parametrize("value", ["true", "TRUE", "yes", "Yes", "1", "on", "t", "T", '"true"'])
def test_global_truthy(value: str) -> None:
    assert req(f"Global={value}\n").global_ is True


@pytest.mark.parametrize("value", ["false", "False", "no", "0", "off", "f", "F"])
def test_global_falsy(value: str) -> None:
    assert req(f"Global={value}\n").global_ is False


@pytest.mark.parametrize("value", ["maybe", "2", "", "true false", "y"])
def test_global_invalid(value: str) -> None:
    err = error(f"Description=x\nGlobal={value}\n")
    assert err.line == 3 and "Global" in err.message


def test_global_last_line_wins() -> None:
    assert req("Global=true\nGlobal=false\n").global_ is False


def test_global_false_combines_with_anything() -> None:
    r = req("Global=false\nMachineOf=db.service\nReplaces=x.service\n")
    assert r.machine_of == ("db.service",) and not r.global_


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        (f"MachineID={MID} {MID}\n", 2, "single value"),
        (f"MachineID={MID}\nX-ConditionMachineID={MID}\n", 3, "single value"),
        ("MachineID=not-hex\n", 2, "not a machine ID"),
        ("MachineID=xyz\n", 2, "not a machine ID"),
        (f"MachineID={MID}0\n", 2, "not a machine ID"),
        ("X-ConditionMachineBootID=a b\n", 2, "single value"),
        ('Conflicts=""\n', 2, "empty value"),
    ],
)
def test_single_value_and_format_errors(body: str, line: int, fragment: str) -> None:
    err = error(body)
    assert (err.file, err.line) == ("web.service", line)
    assert fragment in err.message


@pytest.mark.parametrize(
    "value",
    ["region", "region=us=east", "=us", "region=", "=", '""', "a=1 broken"],
)
def test_malformed_metadata_rejected(value: str) -> None:
    err = error(f"Description=x\nMachineMetadata={value}\n")
    assert (err.file, err.line) == ("web.service", 3)
    assert "malformed" in err.message and "MachineMetadata" in err.message


COMBINATIONS = [
    (f"MachineID={MID}", "MachineOf=db.service", "MachineID cannot be combined with MachineOf"),
    (f"MachineID={MID}", "Conflicts=x*.service", "MachineID cannot be combined with Conflicts"),
    (f"MachineID={MID}", "Global=true", "MachineID cannot be combined with Global"),
    (f"MachineID={MID}", "Replaces=x.service", "MachineID cannot be combined with Replaces"),
    ("Global=yes", "MachineOf=db.service", "Global cannot be combined with MachineOf"),
    ("Global=1", "Replaces=x.service", "Global cannot be combined with Replaces"),
    ("Conflicts=a.service", "Replaces=b.service", "Conflicts cannot be combined with Replaces"),
    (
        f"X-ConditionMachineID={MID}",
        "X-Conflicts=x",
        "X-ConditionMachineID cannot be combined with X-Conflicts",
    ),
    (
        "MachineOf=db.service",
        "Conflicts=db*",
        'MachineOf "db.service" is matched by this unit\'s own Conflicts "db*"',
    ),
    (
        "MachineOf=db.service",
        "Replaces=d?.service",
        'MachineOf "db.service" is matched by this unit\'s own Replaces "d?.service"',
    ),
]


@pytest.mark.parametrize(("first", "second", "message"), COMBINATIONS)
@pytest.mark.parametrize("swap", [False, True], ids=["in-order", "swapped"])
def test_rejected_combinations(first: str, second: str, message: str, swap: bool) -> None:
    lines = [second, first] if swap else [first, second]
    body = "Description=padding\n" + "\n".join(lines) + "\n"
    err = error(body)
    assert err.message == message
    assert err.line == 4  # the later of the two options
    assert str(err) == f"web.service:4: {message}"


def test_machine_of_not_matched_is_fine() -> None:
    r = req("MachineOf=db.service\nConflicts=web*\n")
    assert r.machine_of == ("db.service",) and r.conflicts == ("web*",)


def test_machine_of_matched_after_expansion() -> None:
    unit = parse_unit_file("[X-Fleet]\nMachineOf=db@%i.service\nConflicts=db@2.service\n")
    with pytest.raises(UnitFileError, match="is matched by"):
        parse_requirements(unit, "web@2.service")
    assert parse_requirements(unit, "web@3.service")[0].machine_of == ("db@3.service",)


def test_unknown_key_warns_with_line() -> None:
    unit = parse_unit_file("[Unit]\nDescription=x\n\n[X-Fleet]\nGlobal=false\nFoo=bar\nmachineid=1\n")
    requirements, warnings = parse_requirements(unit, "web.service")
    assert requirements == Requirements()
    assert warnings == [
        'web.service:6: unknown [X-Fleet] option "Foo" ignored',
        'web.service:7: unknown [X-Fleet] option "machineid" ignored',
    ]


def test_labels_use_filename_and_survive_missing_lines() -> None:
    unit = parse_unit_file("[X-Fleet]\nFoo=1\nMachineMetadata=bad\n")
    with pytest.raises(UnitFileError) as info:
        parse_requirements(unit, "web.service", "units/web.service")
    assert str(info.value).startswith("units/web.service:3: ")
    api_unit = UnitFile.from_options([{"section": "X-Fleet", "name": "Foo", "value": "1"}])
    assert parse_requirements(api_unit, "web.service")[1] == ['web.service: unknown [X-Fleet] option "Foo" ignored']
    api_bad = UnitFile.from_options(
        [
            {"section": "X-Fleet", "name": "MachineID", "value": MID},
            {"section": "X-Fleet", "name": "Global", "value": "true"},
        ]
    )
    with pytest.raises(UnitFileError) as info:
        parse_requirements(api_bad, "web.service")
    assert str(info.value) == "web.service: MachineID cannot be combined with Global"


def test_requirements_are_hashable() -> None:
    r = req('MachineMetadata="a=1" b=2\nConflicts=x\n')
    assert hash(r) == hash(req('MachineMetadata="a=1" b=2\nConflicts=x\n'))


def test_template_keeps_instance_specifiers_unchecked() -> None:
    # Expanded for the template, %i is empty: "hostname=" was refused, so was the template.
    r = req("MachineMetadata=hostname=%i\n", "metadata@.service")
    assert r.metadata == (("hostname", ("%i",)),)
    r = req("MachineID=%i\n", "pinned@.service")
    assert r.machine_id == "%i"
    r = req("MachineMetadata=%i\nConflicts=%i\nGlobal=%i\n", "odd@.service")
    assert r.metadata == () and r.conflicts == ("%i",) and r.global_ is False
    # MachineOf and Conflicts that might meet only once expanded: the instance decides.
    assert req("MachineOf=db@%i.service\nConflicts=db@*.service\n", "web@.service").machine_of == ("db@%i.service",)


def test_template_still_checks_values_without_instance_specifiers() -> None:
    assert "malformed" in str(error("MachineMetadata=role=%p=x\n", "web@.service"))
    assert "not a machine ID" in str(error("MachineID=%p\n", "web@.service"))
    assert "cannot be combined" in str(error("MachineID=%i\nGlobal=true\n", "web@.service"))
    # A literal %% is not a specifier.
    assert "malformed" in str(error("MachineMetadata=host=%%i=\n", "web@.service"))


def test_instance_of_a_lenient_template_is_checked() -> None:
    assert req("MachineMetadata=hostname=%i\n", "metadata@node1.service").metadata == (("hostname", ("node1",)),)
    assert "not a machine ID" in str(error("MachineID=%i\n", "pinned@nothex.service"))
    assert "matched by this unit's own" in str(
        error("MachineOf=db@%i.service\nConflicts=db@*.service\n", "web@1.service")
    )

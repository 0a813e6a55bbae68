"""The unit input contract (docs/units.md): what a unit's options may hold, checked on
submit (fleetd.model.submit, build_unit) and again by every reader (UnitFile.problem)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.model.errors import UnitFileError
from fleetd.model.state import StoredUnit
from fleetd.model.submit import Action, Refusal, SubmitError, decide, submission
from fleetd.model.unit import DesiredState, build_unit
from fleetd.model.unitfile import UnitFile, UnitOption, option_problem, parse_unit_file

GOOD = [("Service", "ExecStart", "/bin/sleep 1000"), ("Service", "User", "nobody")]


def unit_of(*triples: tuple[str, str, str]) -> UnitFile:
    return UnitFile(tuple(UnitOption(*t) for t in triples))


def options(*triples: tuple[str, str, str]) -> list[dict[str, str]]:
    return [{"section": s, "name": n, "value": v} for s, n, v in triples]


# (section, name, value) -> fragment of the refusal
REFUSED = [
    (("Service", "ExecStart", "/bin/sleep 1000 \\"), "ends with a backslash"),
    (("Service", "ExecStart", "\\"), "ends with a backslash"),
    (("Service", "ExecStart", " /bin/true"), "starts or ends with whitespace"),
    (("Service", "ExecStart", "/bin/true "), "starts or ends with whitespace"),
    (("Service", "ExecStart", "/bin/true\t"), "starts or ends with whitespace"),
    (("Service", "ExecStart", "\u00a0/bin/true"), "starts or ends with whitespace"),
    (("Service", "ExecStart", "/bin/true\n"), "line break"),
    (("Service", "ExecStart", "/bin/true\nUser=root"), "line break"),
    (("Service", "ExecStart", "a\rb"), "line break"),
    (("Service", "ExecStart", "a\u2028b"), "line break"),
    (("Service", "ExecStart", "a\x85b"), "line break"),
    (("Service", "ExecStart", "a\x00b"), "control character"),
    (("Service", "ExecStart", "a\x1b[31mb"), "control character"),
    (("Service", "ExecStart", "a\x7fb"), "control character"),
    (("Service", "ExecStart", "a\x9bb"), "control character"),
    (("Unit", "Description", "\ud800"), "not valid UTF-8"),
    (("Unit", "Description", "a\udfffb"), "not valid UTF-8"),
    (("Unit", "Descr\ud800", "x"), "not valid UTF-8"),
    (("Un\udc80it", "Description", "x"), "not valid UTF-8"),
    (("Unit", "Descr\tiption", "x"), "control character"),
    (("Unit\t", "Description", "x"), "control character"),
    (("Unit", " Description", "x"), "invalid option name"),
    (("Unit", "Description ", "x"), "invalid option name"),
    (("Unit", "", "x"), "invalid option name"),
    (("Unit", "A=B", "x"), "invalid option name"),
    (("Unit", "#Description", "x"), "invalid option name"),
    (("Unit", ";Description", "x"), "invalid option name"),
    (("Unit", "[Description", "x"), "invalid option name"),
    (("", "Description", "x"), "invalid section name"),
    ((" Unit", "Description", "x"), "invalid section name"),
    (("Un]it", "Description", "x"), "invalid section name"),
]


@pytest.mark.parametrize(("option", "fragment"), REFUSED)
def test_refused_options_name_the_option_and_the_problem(option: tuple[str, str, str], fragment: str) -> None:
    problem = option_problem(*option)
    assert problem is not None and fragment in problem
    file = unit_of(*GOOD, option)
    assert file.problem() == problem
    with pytest.raises(UnitFileError) as info:
        build_unit("web.service", file)
    assert fragment in str(info.value) and str(info.value).startswith("web.service: ")
    with pytest.raises(SubmitError) as refusal:
        submission("web.service", DesiredState.LAUNCHED, options(*GOOD, option))
    assert refusal.value.kind is Refusal.INVALID
    assert fragment in refusal.value.message
    # the message is plain text a JSON body and a terminal can carry
    refusal.value.message.encode("utf-8")


def test_the_backslash_message_names_section_and_option() -> None:
    with pytest.raises(SubmitError) as refusal:
        submission("web.service", DesiredState.LAUNCHED, options(("Service", "ExecStart", "/bin/sleep 1000 \\")))
    assert "[Service] ExecStart" in refusal.value.message


ACCEPTED = [
    ("Service", "Environment", "A=1\tB=2"),  # a tab inside a value
    ("Service", "ExecStart", "/bin/sh -c 'echo \\\\ done'"),  # backslashes inside
    ("Service", "ExecStart", "/bin/echo a\\ b"),
    ("Unit", "Description", "caf\u00e9 \u2603 \U0001f680"),  # any valid Unicode
    ("Unit", "Description", "# not a comment ; nor this"),
    ("Unit", "Description", ""),  # an empty value
    ("Unit", "Description", "x = y = z"),
    ("X-Fleet", "Conflicts", "web@*.service"),
    ("Unit With Space", "Some Name", "v"),
]


@pytest.mark.parametrize("option", ACCEPTED)
def test_accepted_options_read_back_the_same(option: tuple[str, str, str]) -> None:
    assert option_problem(*option) is None
    file = unit_of(*GOOD, option)
    assert file.problem() is None
    assert parse_unit_file(file.serialize()) == file
    result = submission("web.service", DesiredState.LAUNCHED, options(*GOOD, option))
    assert result.unit is not None and result.unit.file == file


def test_the_joined_line_attack_is_refused_before_it_is_stored() -> None:
    # written as a unit file, the value would swallow "User=nobody": the unit would run as
    # root while fleetctl cat shows User=nobody
    sent = unit_of(("Service", "ExecStart", "/bin/sleep 1000 \\"), ("Service", "User", "nobody"))
    assert parse_unit_file(sent.serialize()).get("Service", "User") is None
    assert sent.problem() is not None


def test_a_local_file_that_would_not_read_back_is_refused() -> None:
    # an escaped backslash before a blank line parses to a value ending in a backslash
    text = "[Service]\nExecStart=/bin/echo \\\\\n\n[Unit]\nDescription=x\n"
    with pytest.raises(UnitFileError, match="ends with a backslash"):
        build_unit("web.service", text, filename="units/web.service")
    with pytest.raises(UnitFileError, match="control character"):
        build_unit("web.service", "[Unit]\nDescription=\x1b]0;owned\x07\n")


def test_hash_of_a_lone_surrogate_does_not_raise() -> None:
    # refused on submit, but a reader hashing what an old client stored must not crash
    file = unit_of(("Unit", "Description", "\ud800"))
    assert len(file.hash()) == 40
    assert file.problem() is not None
    assert (
        unit_of(("Unit", "Description", "caf\u00e9")).hash()
        == UnitFile.from_options(options(("Unit", "Description", "caf\u00e9"))).hash()
    )


def test_a_stored_bad_body_may_be_made_inactive_but_not_started() -> None:
    bad = unit_of(("Service", "ExecStart", "/bin/sleep 1000 \\"), ("Service", "User", "nobody"))
    stored = StoredUnit("web.service", bad, DesiredState.LOADED)
    request = submission("web.service", DesiredState.LAUNCHED, None)
    with pytest.raises(SubmitError) as refusal:
        decide(request, stored)
    assert refusal.value.kind is Refusal.INVALID and "as stored cannot run" in refusal.value.message
    assert decide(submission("web.service", DesiredState.INACTIVE, None), stored).action is Action.SET_DESIRED


def test_an_instance_of_a_bad_template_is_refused() -> None:
    template = StoredUnit("t@.service", unit_of(("Service", "ExecStart", "/bin/x \\")), DesiredState.INACTIVE)
    with pytest.raises(SubmitError) as refusal:
        decide(submission("t@1.service", DesiredState.LAUNCHED, None), None, template)
    assert refusal.value.kind is Refusal.INVALID and "ends with a backslash" in refusal.value.message


def test_a_bad_name_is_a_submit_refusal() -> None:
    with pytest.raises(SubmitError) as refusal:
        submission("-Hroot@somehost.service", DesiredState.LAUNCHED, options(*GOOD))
    assert refusal.value.kind is Refusal.INVALID and 'must not start with "-"' in refusal.value.message
    with pytest.raises(SubmitError, match="reserved"):
        submission("systemd-journald.service", DesiredState.LAUNCHED, options(*GOOD))


# -- property: whatever is accepted reads back the same, with the same hash ---------------------

# Characters that stress the parser: whitespace of every kind, line breaks, backslashes,
# comment and header characters, controls, lone surrogates, and ordinary text.
_TRICKY = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000", "\\", "#", ";", "[", "]", "="]
    + ["\x00", "\x1b", "\x7f", "\ud800", "\udfff", "\ufeff", "%", '"', "'", "\u00e9", "\U0001f680"]
)
_TEXT = st.text(st.one_of(_TRICKY, st.characters(codec="utf-8"), st.sampled_from("abcXYZ019/-_.")), max_size=12)
_KNOWN_SECTIONS = st.sampled_from(["Unit", "Service", "X-Fleet", "Install"])
_KNOWN_NAMES = st.sampled_from(["ExecStart", "User", "Description", "Global"])
_SECTIONS = st.one_of(_KNOWN_SECTIONS, _TEXT)
_NAMES = st.one_of(_KNOWN_NAMES, _TEXT)
# Mostly-valid options too, so that many examples are accepted and the round trip is
# really exercised: printable text with inner spaces, tabs, backslashes and comment marks.
_PLAIN = st.text(st.sampled_from("abc XYZ 019/-_.\t\\#;[]=%\u00e9\u2603"), max_size=16)
_PLAIN_OPTION = st.tuples(_KNOWN_SECTIONS, _KNOWN_NAMES, _PLAIN)
_OPTIONS = st.lists(
    st.one_of(st.tuples(_SECTIONS, _NAMES, _TEXT), _PLAIN_OPTION, _PLAIN_OPTION, _PLAIN_OPTION), max_size=5
)


@settings(max_examples=300, deadline=None)
@given(_OPTIONS)
def test_accepted_options_always_round_trip_with_a_stable_hash(triples: list[tuple[str, str, str]]) -> None:
    try:
        request = submission("web.service", DesiredState.INACTIVE, options(*triples))
    except SubmitError:
        return
    if request.unit is None:  # no options: no new body
        assert triples == []
        return
    file = request.unit.file
    text = file.serialize()
    again = parse_unit_file(text)
    assert again == file
    assert again.hash() == file.hash()
    assert parse_unit_file(again.serialize()).hash() == file.hash()
    text.encode("utf-8")  # the file an agent writes is UTF-8


@settings(max_examples=150, deadline=None)
@given(_OPTIONS)
def test_problem_is_none_exactly_when_the_file_reads_back(triples: list[tuple[str, str, str]]) -> None:
    file = unit_of(*triples)
    if file.problem() is not None:
        return
    assert parse_unit_file(file.serialize()) == file
    assert all(option_problem(*t) is None for t in triples)

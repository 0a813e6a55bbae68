"""Shared rules of the model that several layers read: boolean words, globs, short ids.

Each input's boolean word set is checked against the exact words it accepts, so a set
cannot widen or narrow by accident (scripts written for fleet depend on them), and the
users of each rule are checked to use the one definition.
"""

from __future__ import annotations

import pytest

from fleetd import config as fleetd_config
from fleetd.model.errors import UnitFileError
from fleetd.model.names import GLOB_CHARS, has_glob
from fleetd.model.requirements import parse_requirements
from fleetd.model.state import MachineState, short_id
from fleetd.model.unitfile import parse_unit_file
from fleetd.model.words import (
    CONFIG_BOOL,
    FLAG_BOOL,
    QUERY_BOOL,
    UNIT_FILE_BOOL,
    BoolWords,
    parse_bool,
)
from fleetd.scheduler.occupancy import is_literal

# every word any input accepts, and near misses
CANDIDATES = [
    "true",
    "false",
    "yes",
    "no",
    "1",
    "0",
    "on",
    "off",
    "t",
    "f",
    "y",
    "n",
    "",
    "maybe",
    "2",
    "ja",
    "enable",
    "enabled",
    "truee",
    "-1",
]

EXPECTED: dict[str, tuple[BoolWords, set[str], set[str]]] = {
    "unit file": (UNIT_FILE_BOOL, {"true", "yes", "1", "on", "t"}, {"false", "no", "0", "off", "f"}),
    "query string": (QUERY_BOOL, {"true", "yes", "1", "on", "t"}, {"false", "no", "0", "off", "f", ""}),
    "flag": (FLAG_BOOL, {"true", "yes", "1", "on", "t", "y"}, {"false", "no", "0", "off", "f", "n"}),
    "config": (CONFIG_BOOL, {"true", "yes", "1", "on", "t", "y"}, {"false", "no", "0", "off", "f", "n", ""}),
}


def _accepted(words: BoolWords) -> tuple[set[str], set[str]]:
    true, false = set(), set()
    for candidate in CANDIDATES:
        try:
            (true if parse_bool(candidate, words) else false).add(candidate)
        except ValueError:
            pass
    return true, false


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_word_set_accepts_exactly_its_words(kind: str) -> None:
    words, true, false = EXPECTED[kind]
    assert _accepted(words) == (true, false)
    assert (words.true, words.false) == (true, false)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_case_is_ignored(kind: str) -> None:
    words = EXPECTED[kind][0]
    assert parse_bool("TRUE", words) is True and parse_bool("Off", words) is False


def test_blanks_are_ignored_except_in_unit_files() -> None:
    for words in (QUERY_BOOL, FLAG_BOOL, CONFIG_BOOL):
        assert parse_bool(" yes\n", words) is True
    with pytest.raises(ValueError):
        parse_bool(" yes", UNIT_FILE_BOOL)


def test_default_word_set_is_the_configs() -> None:
    assert parse_bool("") is False and parse_bool("y") is True


def test_error_messages_are_each_inputs() -> None:
    with pytest.raises(ValueError, match=r"^invalid boolean 'maybe' \(use true/yes/1/on/t or false/no/0/off/f\)$"):
        parse_bool("maybe", UNIT_FILE_BOOL)
    with pytest.raises(ValueError, match=r'^invalid boolean " maybe" \(use true or false\)$'):
        parse_bool(" maybe", CONFIG_BOOL)


def test_unit_files_and_config_use_their_word_sets() -> None:
    def global_(value: str) -> bool:
        unit = parse_unit_file(f"[X-Fleet]\nGlobal={value}\n")
        return parse_requirements(unit, "a.service")[0].global_

    assert global_("on") is True and global_("f") is False
    with pytest.raises(UnitFileError, match="invalid boolean 'y'"):
        global_("y")
    assert fleetd_config.parse_bool("y") is True and fleetd_config.parse_bool("") is False
    with pytest.raises(ValueError, match='invalid boolean "maybe"'):
        fleetd_config.parse_bool("maybe")


@pytest.mark.parametrize(
    ("text", "glob"),
    [
        ("web.service", False),
        ("web*.service", True),
        ("web?.service", True),
        ("web[12].service", True),
        ("web@1.service", False),
        ("", False),
    ],
)
def test_glob_is_one_rule_for_fleetctl_and_scheduler(text: str, glob: bool) -> None:
    from fleetctl.arguments import has_glob as fleetctl_has_glob

    assert frozenset("*?[") == GLOB_CHARS
    assert has_glob(text) is glob
    assert fleetctl_has_glob(text) is glob
    assert is_literal(text) is not glob


def test_short_id_is_the_first_eight_characters() -> None:
    machine = "113f16a7d5f04bb2a2e7a9a8c1f1f0c5"
    assert short_id(machine) == "113f16a7"
    assert short_id("abc") == "abc"
    assert MachineState(machine).short_id == short_id(machine)


def test_fleetctl_shows_the_short_id() -> None:
    from fleetctl.output import machine_id_legend

    machine = "113f16a7d5f04bb2a2e7a9a8c1f1f0c5"
    assert machine_id_legend(machine, full=False) == f"{short_id(machine)}..."
    assert machine_id_legend(machine, full=True) == machine

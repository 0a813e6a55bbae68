"""Boolean words: which spellings of true and false each kind of input accepts.

fleet never had one rule: its unit files, its daemon's configuration, fleetctl's flags
and the API's query strings each took a slightly different set of words, and scripts
written against fleet rely on them. So there is one parser and one *named* word set per
input, instead of a copy of the parser (and a drifting copy of the words) per module.
Matching ignores case; the input decides whether surrounding blanks are ignored too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoolWords:
    """The words one kind of input accepts as true and as false (lower case).

    ``strip``: whether blanks around the value are ignored (typed or read values are
    forgiven; a unit file value is already split into words, so a blank is deliberate).
    ``message``: the error for any other value, with ``{value}`` the value as given.
    """

    true: frozenset[str]
    false: frozenset[str]
    strip: bool = True
    message: str = 'invalid boolean "{value}" (use true or false)'


#: ``[X-Fleet]`` options in unit files (``Global=``).
UNIT_FILE_BOOL = BoolWords(
    true=frozenset({"true", "yes", "1", "on", "t"}),
    false=frozenset({"false", "no", "0", "off", "f"}),
    strip=False,
    message="invalid boolean {value!r} (use true/yes/1/on/t or false/no/0/off/f)",
)
#: Query-string parameters of the HTTP API (``?replace=``, ``?follow=``): a parameter
#: given without a value (``?follow=``) is false.
QUERY_BOOL = BoolWords(
    true=UNIT_FILE_BOOL.true,
    false=UNIT_FILE_BOOL.false | {""},
)
#: fleetctl's flags and ``FLEETCTL_*`` environment variables: also ``y``/``n``.
FLAG_BOOL = BoolWords(
    true=UNIT_FILE_BOOL.true | {"y"},
    false=UNIT_FILE_BOOL.false | {"n"},
)
#: fleetd's configuration (file, ``FLEET_*`` environment, flags): the flag words, and an
#: empty value (``disable_engine=``) is false.
CONFIG_BOOL = BoolWords(
    true=FLAG_BOOL.true,
    false=FLAG_BOOL.false | {""},
)


def parse_bool(value: str, words: BoolWords = CONFIG_BOOL) -> bool:
    """``value`` read with the word set of its input; ``ValueError`` (``words.message``)
    for anything else."""
    word = (value.strip() if words.strip else value).lower()
    if word in words.true:
        return True
    if word in words.false:
        return False
    raise ValueError(words.message.format(value=value))


__all__ = ["CONFIG_BOOL", "FLAG_BOOL", "QUERY_BOOL", "UNIT_FILE_BOOL", "BoolWords", "parse_bool"]

"""The request limits' arithmetic (fleetd.model.limits) and the JSON checks of the API's
body reader, without a server."""

from __future__ import annotations

import pytest

from fleetd.api.errors import ApiError
from fleetd.api.params import check_json, whole_number
from fleetd.model.limits import (
    MAX_JSON_DEPTH,
    MAX_UNIT_BYTES,
    OPTION_OVERHEAD_BYTES,
    options_size,
    too_large,
    unit_size,
)
from fleetd.model.unitfile import parse_unit_file

SERVICE = "[Unit]\nDescription=hello\n\n[Service]\nExecStart=/bin/sleep infinity\n"


def test_unit_size_counts_every_option_with_its_section() -> None:
    file = parse_unit_file(SERVICE)
    expected = sum(OPTION_OVERHEAD_BYTES + len(o.section) + len(o.name) + len(o.value.encode()) for o in file.options)
    assert unit_size(file) == options_size(file.to_options()) == expected
    # non-ASCII counts its UTF-8 bytes; a lone surrogate does not break the measure
    assert options_size([{"section": "S", "name": "n", "value": "é\ud800"}]) == OPTION_OVERHEAD_BYTES + 2 + 2 + 3
    # malformed options count only their overhead: validation names what is wrong with them
    assert options_size([{"section": 1}, "x"]) == 2 * OPTION_OVERHEAD_BYTES  # type: ignore[list-item]


def test_too_large_names_the_limit() -> None:
    assert too_large(MAX_UNIT_BYTES, MAX_UNIT_BYTES, "unit a.service") is None
    message = too_large(MAX_UNIT_BYTES + 1, MAX_UNIT_BYTES, "unit a.service")
    assert message == "unit a.service is 65537 bytes; the limit is 65536 bytes (64 KiB)"


def nested(depth: int) -> object:
    document: object = "leaf"
    for _ in range(depth - 1):
        document = [document]
    return document


def test_check_json_depth_and_surrogates() -> None:
    check_json(nested(MAX_JSON_DEPTH))
    check_json({"a": ["é", "\U0001f600", {"k": 1.5, "n": None}]})
    with pytest.raises(ApiError, match="deeper than"):
        check_json(nested(MAX_JSON_DEPTH + 2))
    for bad in ("\ud800", ["ok", {"\udfff": 1}], {"k": ["\ud83d"]}):
        with pytest.raises(ApiError, match="surrogate") as caught:
            check_json(bad)
        assert caught.value.status == 400


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), ("-7", -7), ("0" * 5000 + "3", 3)])
def test_whole_numbers(text: str, value: int) -> None:
    assert whole_number("n", text) == value


@pytest.mark.parametrize("text", ["", "²", "١٢", "+5", " 5", "5 ", "1_0", "1e3", "0x1", "--1", "9" * 19, "4.0"])
def test_not_whole_numbers(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        whole_number("n", text)
    assert caught.value.status == 400 and "n=" in caught.value.message

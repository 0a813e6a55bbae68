"""How fleetctl splits a batch write into requests within the server's limits
(fleetctl.client.batches), and the entries it sends (UnitWrite.entry)."""

from __future__ import annotations

import json

from fleetctl.client import UnitWrite, batches
from fleetd.model.limits import MAX_BATCH_BYTES, MAX_BATCH_UNITS


def test_a_thousand_ordinary_units_are_one_request() -> None:
    options = [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep infinity"}]
    entries = [UnitWrite(f"u{i}.service", "launched", options).entry() for i in range(MAX_BATCH_UNITS)]
    assert batches(entries) == [range(0, MAX_BATCH_UNITS)]
    assert batches(entries + entries[:1]) == [range(0, MAX_BATCH_UNITS), range(MAX_BATCH_UNITS, MAX_BATCH_UNITS + 1)]
    assert batches([]) == []


def test_large_units_are_split_by_bytes_and_every_request_fits() -> None:
    big = [{"section": "Service", "name": "Environment", "value": "x" * 60_000}]
    entries = [UnitWrite(f"big{i}.service", "loaded", big).entry() for i in range(200)]
    runs = batches(entries)
    assert len(runs) > 1 and [i for run in runs for i in run] == list(range(200))
    for run in runs:
        body = json.dumps({"units": entries[run.start : run.stop], "replace": False})
        assert len(body) <= MAX_BATCH_BYTES
    # one entry larger than the limit still goes (alone): the server names the problem
    huge = UnitWrite("huge.service", "loaded", [{"section": "S", "name": "N", "value": "y" * MAX_BATCH_BYTES}])
    assert batches([entries[0], huge.entry(), entries[1]]) == [range(0, 1), range(1, 2), range(2, 3)]


def test_an_entry_is_a_put_body_with_its_name() -> None:
    assert UnitWrite("a.service", "loaded").entry() == {"name": "a.service", "desiredState": "loaded"}
    options = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]
    assert UnitWrite("b.service", "launched", options, replace=True).entry() == {
        "name": "b.service",
        "desiredState": "launched",
        "options": options,
    }

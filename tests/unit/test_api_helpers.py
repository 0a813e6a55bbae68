"""The API's pure helpers: page tokens, token rules, PATCH validation, currentState,
socket-activation environment handling."""

from __future__ import annotations

import os

import pytest

from fleetd.api.activation import ActivationError, listen_fds
from fleetd.api.auth import TokenRules, authorized
from fleetd.api.context import Node, NodeInfo
from fleetd.api.errors import ApiError
from fleetd.api.machines import parse_metadata_patch
from fleetd.api.paging import BadPageToken, decode_token, encode_token, paginate
from fleetd.model.state import UnitState
from fleetd.model.wire import current_state


def test_paginate_walks_every_item_once() -> None:
    items = [f"u{i:03d}" for i in range(25)]
    pages, token = [], None
    while True:
        page, token = paginate(items, lambda x: (x,), "units", token, 10)
        pages.append(page)
        if token is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sum(pages, []) == items


def test_paginate_exact_multiple_and_empty() -> None:
    items = [str(i) for i in range(10, 30)]
    page, token = paginate(items, lambda x: (x,), "r", None, 20)
    assert len(page) == 20 and token is None
    assert paginate([], lambda x: (x,), "r", None, 5) == ([], None)


def test_paginate_resumes_after_the_last_key_even_if_items_change() -> None:
    items = ["a", "b", "c", "d"]
    page, token = paginate(items, lambda x: (x,), "r", None, 2)
    assert page == ["a", "b"]
    # "b" was deleted and "ab" added before the next page: nothing repeats or is skipped
    page, token = paginate(["a", "ab", "c", "d"], lambda x: (x,), "r", token, 2)
    assert page == ["c", "d"] and token is None


def test_bad_tokens() -> None:
    with pytest.raises(BadPageToken):
        decode_token("units", "!!!")
    with pytest.raises(BadPageToken):
        decode_token("units", encode_token("machines", ("x",)))
    with pytest.raises(BadPageToken):
        decode_token("units", "eyJyIjoidW5pdHMiLCJhIjpbMV19")  # {"r":"units","a":[1]}
    assert decode_token("state", encode_token("state", ("a", "b"))) == ("a", "b")


def test_token_rules() -> None:
    rules = TokenRules()
    assert authorized(rules, ("127.0.0.1", 1), None)  # nothing configured
    rules.add("0.0.0.0", 8000, "wild")
    rules.add("10.0.0.1", 8000, "exact")
    rules.add("::", 9000, None)
    assert authorized(rules, "/run/fleet.sock", None)  # unix socket: never a token
    assert authorized(rules, b"\0abstract", None)
    assert not authorized(rules, ("127.0.0.1", 8000), None)
    assert authorized(rules, ("127.0.0.1", 8000), "Bearer wild")
    assert authorized(rules, ("::ffff:127.0.0.1", 8000, 0, 0), "bearer wild")
    assert authorized(rules, ("10.0.0.1", 8000), "Bearer exact")
    assert not authorized(rules, ("10.0.0.1", 8000), "Bearer wild")
    assert not authorized(rules, ("10.0.0.1", 8000), "Basic exact")
    assert authorized(rules, ("::1", 9000, 0, 0), None)
    # an address no listener registered: fail closed once any token exists
    assert not authorized(rules, ("10.0.0.9", 7000), None)
    assert not authorized(rules, None, None)


def test_parse_metadata_patch() -> None:
    ops = parse_metadata_patch(
        [
            {"op": "add", "path": "/m1/metadata/a", "value": "x"},
            {"op": "replace", "path": "/m1/metadata/b", "value": {"value": "y"}},
            {"op": "remove", "path": "/m2/metadata/c"},
        ]
    )
    assert [(o.op, o.machine_id, o.key, o.value) for o in ops] == [
        ("add", "m1", "a", "x"),
        ("replace", "m1", "b", "y"),
        ("remove", "m2", "c", None),
    ]
    with pytest.raises(ApiError) as caught:
        parse_metadata_patch([{"op": "add", "path": "/m1/metadata/a", "value": "x\n"}])
    assert caught.value.status == 400 and "operation 0" in caught.value.message
    with pytest.raises(ApiError):
        parse_metadata_patch({"op": "add"})


def _state(machine: str, active: str) -> UnitState:
    return UnitState("u.service", machine, "h", "loaded", active, "x")


def test_current_state() -> None:
    assert current_state([], {}) == "inactive"
    assert current_state(["m1"], {}) == "inactive"
    assert current_state(["m1"], {"m2": _state("m2", "active")}) == "inactive"
    for active in ("active", "activating", "reloading"):
        assert current_state(["m1"], {"m1": _state("m1", active)}) == "launched"
    for active in ("inactive", "failed", "deactivating"):
        assert current_state(["m1"], {"m1": _state("m1", active)}) == "loaded"
    both = {"m1": _state("m1", "failed"), "m2": _state("m2", "active")}
    assert current_state(["m1", "m2"], both) == "launched"


def test_node_is_a_node_info() -> None:
    node = Node("a" * 32)
    assert isinstance(node, NodeInfo)
    assert node.error() is None
    with pytest.raises(NotImplementedError):
        node.journal("a.service", 10, False, "short")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 0),
        ({"LISTEN_FDS": "2"}, 0),
        ({"LISTEN_FDS": "2", "LISTEN_PID": "1"}, 0),  # meant for another process
        ({"LISTEN_FDS": "0", "LISTEN_PID": "self"}, 0),
    ],
)
def test_listen_fds_without_sockets(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: int) -> None:
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert len(listen_fds()) == expected
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ


@pytest.mark.parametrize(("fds", "pid"), [("two", "self"), ("-1", "self"), ("1", "abc")])
def test_listen_fds_malformed(monkeypatch: pytest.MonkeyPatch, fds: str, pid: str) -> None:
    monkeypatch.setenv("LISTEN_FDS", fds)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()) if pid == "self" else pid)
    with pytest.raises(ActivationError):
        listen_fds()
    assert "LISTEN_FDS" not in os.environ


def test_listen_fds_can_keep_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "1"

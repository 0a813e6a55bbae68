"""Journal and status relayed between fleetds, over a real etcd and real sockets.

Machine A's API relays to machine B's peer listener (loopback here; the cluster test in
tests/cluster/test_remote.py does it between real hosts that run the shipped units).
Every door of the peer listener is tried: no signature, a wrong key, a replay, an old
request, another machine's path, a weak secret in etcd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from fleetd.api import Node, TcpListener, make_app, start_api
from fleetd.api.listeners import ApiServer
from fleetd.api.peer import MAX_SKEW, signed_headers
from fleetd.api.peer_listener import install_relay, start_peer_listener
from fleetd.api.peer_tls import make_identity, pinned_context
from fleetd.model.state import MachineState
from fleetd.registry.etcd_registry import EtcdRegistry
from fleetd.registry.keys import Keys
from fleetd.systemd.journal import StatusText

pytestmark = pytest.mark.integration

A, B, C = "a" * 32, "b" * 32, "c" * 32


def node(machine_id: str) -> Node:
    async def journal(unit: str, lines: int, follow: bool, output: str) -> AsyncIterator[str]:
        for i in range(lines):
            yield f"{machine_id[:4]} {unit} line {i} ({output})"
        if follow:
            yield f"{machine_id[:4]} {unit} followed"
            await asyncio.Event().wait()  # a follow never ends by itself

    async def status(unit: str) -> str:
        if unit == "missing.service":
            raise LookupError(f"no unit {unit}")
        return StatusText(f"{unit} on {machine_id[:4]}: inactive (dead)\n", 3)

    return Node(machine_id, journal, status)


@dataclass
class Pair:
    registry: EtcdRegistry
    api: ApiServer  # machine A's API, which relays
    peer: ApiServer  # machine B's peer listener
    session: aiohttp.ClientSession
    lease: int  # the machines' lease

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.tcp_port()}/fleet/v1"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer.tcp_port()}"


IDENTITY = make_identity(B)  # made once: a key pair per test would only cost time
PINNED = pinned_context(IDENTITY.cert_pem)


@pytest.fixture
async def pair(registry: EtcdRegistry) -> AsyncIterator[Pair]:
    peer = await start_peer_listener(registry, node(B), "127.0.0.1", 0, IDENTITY.server_context)
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(B, "127.0.0.1", {}, "test", IDENTITY.cert_pem), lease)
    await registry.register_machine(MachineState(C, "", {}, "test"), lease)  # no IP: cannot be reached
    app = make_app(registry, node(A))
    install_relay(app, registry, A, peer.tcp_port())
    api = await start_api(app, [TcpListener("127.0.0.1", 0)])
    session = aiohttp.ClientSession()
    try:
        yield Pair(registry, api, peer, session, lease)
    finally:
        await session.close()
        await api.close()
        await peer.close()
        await registry.revoke_lease(lease)


async def test_status_of_another_machine_is_relayed_with_its_exit_code(pair: Pair) -> None:
    async with pair.session.get(f"{pair.api_url}/machines/{B}/status/web.service") as answer:
        assert answer.status == 200
        assert await answer.text() == "web.service on bbbb: inactive (dead)\n"
        assert answer.headers["X-Fleet-Exit-Code"] == "3"
    async with pair.session.get(f"{pair.api_url}/machines/{B}/status/missing.service") as answer:
        assert answer.status == 404  # the peer's own answer comes through
        assert "no unit missing.service" in (await answer.json())["error"]["message"]


async def test_journal_of_another_machine_is_relayed_and_a_follow_streams(pair: Pair) -> None:
    async with pair.session.get(f"{pair.api_url}/machines/{B}/journal/web.service?lines=3&output=cat") as answer:
        assert answer.status == 200
        assert (await answer.text()).splitlines() == [f"bbbb web.service line {i} (cat)" for i in range(3)]
    url = f"{pair.api_url}/machines/{B}/journal/web.service?lines=1&follow=true"
    async with pair.session.get(url) as answer:
        assert answer.status == 200
        first = await asyncio.wait_for(answer.content.readline(), 10)
        second = await asyncio.wait_for(answer.content.readline(), 10)
        assert (first, second) == (b"bbbb web.service line 0 (short)\n", b"bbbb web.service followed\n")


async def test_the_alias_prefix_relays_too(pair: Pair) -> None:
    url = f"http://127.0.0.1:{pair.api.tcp_port()}/v1-alpha/machines/{B}/status/web.service"
    async with pair.session.get(url) as answer:
        assert answer.status == 200 and answer.headers["X-Fleet-Exit-Code"] == "3"


async def test_own_machine_is_answered_locally(pair: Pair) -> None:
    async with pair.session.get(f"{pair.api_url}/machines/{A}/status/web.service") as answer:
        assert answer.status == 200 and "on aaaa" in await answer.text()


async def test_a_machine_without_ip_or_unknown_is_named(pair: Pair) -> None:
    async with pair.session.get(f"{pair.api_url}/machines/{C}/status/web.service") as answer:
        assert answer.status == 404 and "registered no public_ip" in (await answer.json())["error"]["message"]
    async with pair.session.get(f"{pair.api_url}/machines/{'d' * 32}/status/web.service") as answer:
        assert answer.status == 404 and "not in the cluster" in (await answer.json())["error"]["message"]


async def test_an_unreachable_peer_is_a_502_naming_the_machine(pair: Pair) -> None:
    await pair.peer.close()
    async with pair.session.get(f"{pair.api_url}/machines/{B}/status/web.service") as answer:
        assert answer.status == 502
        message = (await answer.json())["error"]["message"]
        assert f"machine {B} at 127.0.0.1:" in message and "peer_port" in message


async def _peer_get(pair: Pair, path: str, headers: dict[str, str]) -> tuple[int, str]:
    async with pair.session.get(pair.peer_url + path, headers=headers, ssl=PINNED) as answer:
        body = await answer.json()
        return answer.status, body["error"]["message"] if "error" in body else ""


async def test_the_peer_listener_refuses_what_is_not_signed_with_the_cluster_key(pair: Pair) -> None:
    path = f"/fleet/v1/machines/{B}/status/web.service"
    secret = await pair.registry.peer_secret()
    assert (await _peer_get(pair, path, {}))[0] == 401
    status, message = await _peer_get(pair, path, signed_headers(b"x" * 32, "GET", path, A))
    assert status == 401 and "wrong signature" in message
    other_path = f"/fleet/v1/machines/{B}/status/other.service"  # a signature covers its path
    status, message = await _peer_get(pair, other_path, signed_headers(secret, "GET", path, A))
    assert status == 401 and "wrong signature" in message
    old = signed_headers(secret, "GET", path, A, now=time.time() - MAX_SKEW - 5)
    status, message = await _peer_get(pair, path, old)
    assert status == 401 and "clock" in message
    good = signed_headers(secret, "GET", path, A)
    async with pair.session.get(pair.peer_url + path, headers=good, ssl=PINNED) as answer:
        assert answer.status == 200
    status, message = await _peer_get(pair, path, good)
    assert status == 401 and "replayed" in message


async def test_the_peer_listener_answers_only_for_its_own_machine_and_only_journal_and_status(pair: Pair) -> None:
    secret = await pair.registry.peer_secret()
    for path in (f"/fleet/v1/machines/{A}/status/web.service", "/fleet/v1/units", "/fleet/v1/machines"):
        headers = signed_headers(secret, "GET", path, A)
        async with pair.session.get(pair.peer_url + path, headers=headers, ssl=PINNED) as answer:
            assert answer.status == 404, path  # no relaying onwards, and no other route


async def test_a_weak_secret_in_etcd_is_refused_by_both_sides(pair: Pair, key_prefix: str) -> None:
    await pair.registry._etcd.put(Keys(key_prefix).peer_secret, b"c2hvcnQ=")
    async with pair.session.get(f"{pair.api_url}/machines/{B}/status/web.service") as answer:
        assert answer.status == 503
        assert "peer secret" in (await answer.json())["error"]["message"]


async def test_the_peer_link_is_tls_pinned_to_the_published_certificate(pair: Pair) -> None:
    # the record carries the certificate; plain http to the listener gets nowhere
    [machine] = [m for m in await pair.registry.machines() if m.id == B]
    assert machine.peer_cert == IDENTITY.cert_pem
    with pytest.raises(aiohttp.ClientError):
        async with pair.session.get(f"http://127.0.0.1:{pair.peer.tcp_port()}/fleet/v1/machines"):
            pass
    # a listener with another key on that address (an impostor) is refused by the relay
    impostor = make_identity(B)
    await pair.registry.register_machine(MachineState(B, "127.0.0.1", {}, "test", impostor.cert_pem), pair.lease)
    async with pair.session.get(f"{pair.api_url}/machines/{B}/status/web.service") as answer:
        assert answer.status == 502
        assert "did not present the certificate that machine published" in (await answer.json())["error"]["message"]


async def test_a_peer_without_a_certificate_is_asked_over_plain_http(registry: EtcdRegistry) -> None:
    # a fleetd that publishes none (an older version) still answers a relay
    peer = await start_peer_listener(registry, node(B), "127.0.0.1", 0)
    lease = await registry.grant_lease(30)
    await registry.register_machine(MachineState(B, "127.0.0.1", {}, "test"), lease)
    app = make_app(registry, node(A))
    install_relay(app, registry, A, peer.tcp_port())
    api = await start_api(app, [TcpListener("127.0.0.1", 0)])
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{api.tcp_port()}/fleet/v1/machines/{B}/status/web.service"
            async with session.get(url) as answer:
                assert answer.status == 200 and answer.headers["X-Fleet-Exit-Code"] == "3"
    finally:
        await api.close()
        await peer.close()
        await registry.revoke_lease(lease)

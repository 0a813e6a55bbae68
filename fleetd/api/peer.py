"""Journal and status between fleetds: a peer listener on each machine, and the relay to it.

fleet read a unit's journal and status over SSH to the unit's machine. Here fleetctl asks
the fleetd it talks to (usually the local unix socket); when the unit is on another
machine, that fleetd relays the request to the *peer listener* of the unit's machine:
TCP on its ``public_ip``, port ``peer_port``. A peer listener answers nothing but the
journal and status of its own machine, and only to requests signed with the cluster's
peer secret (:meth:`~fleetd.registry.registry.Registry.peer_secret`, created in etcd by
the first fleetd), so it needs no setup and grants no more than those two reads.

A signature is HMAC-SHA256 over the method, the path with its query (which names the
target machine and the unit), the sender's machine id, the time and a random nonce. The
key never crosses the network; a request older or newer than ``MAX_SKEW`` seconds, or a
nonce seen before within that window, is refused, so a captured request cannot be sent
again. The link is TLS (:mod:`fleetd.api.peer_tls`): each fleetd serves a certificate
made at start and published in its machine record, and a relay trusts exactly that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from fleetd.api.context import STATE
from fleetd.api.errors import ApiError
from fleetd.api.peer_tls import pinned_context
from fleetd.model.state import MachineState
from fleetd.registry.registry import Registry

log = logging.getLogger("fleetd.peer")

DEFAULT_PEER_PORT = 54729
SCHEME = "Fleet-Peer"
VERSION = "fleet-peer-1"
MAX_SKEW = 60.0  # seconds a request's time may differ from the receiver's clock
NONCE_LIMIT = 100_000  # nonces remembered at once (a window's worth at a high rate)
SECRET_TTL = 30.0  # a cached secret is read again after this long (an operator may rotate it)
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0  # a status or an unfollowed journal; a follow has no read timeout
ERROR_BODY_LIMIT = 64 * 1024
TIME_HEADER, NONCE_HEADER, FROM_HEADER = "X-Fleet-Peer-Time", "X-Fleet-Peer-Nonce", "X-Fleet-Peer-From"
# what a relay copies from the peer's answer to its own
PASSED_HEADERS = ("Content-Type", "X-Fleet-Exit-Code", "Retry-After")


def signature(secret: bytes, method: str, path_qs: str, sender: str, when: str, nonce: str) -> str:
    """The hex HMAC-SHA256 of one request; every part that decides the answer is signed."""
    message = "\n".join((VERSION, method.upper(), path_qs, sender, when, nonce)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, method: str, path_qs: str, sender: str, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate a request from fleetd ``sender``."""
    when = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    return {
        TIME_HEADER: when,
        NONCE_HEADER: nonce,
        FROM_HEADER: sender,
        "Authorization": f"{SCHEME} {signature(secret, method, path_qs, sender, when, nonce)}",
    }


@dataclass
class Nonces:
    """Nonces seen within the skew window: a replay inside the window is refused, and one
    outside it is refused by its time, so nothing older needs remembering."""

    limit: int = NONCE_LIMIT
    seen: dict[str, float] = field(default_factory=dict)  # nonce -> when it may be forgotten

    def first_use(self, nonce: str, now: float) -> bool:
        if nonce in self.seen:
            return False
        if len(self.seen) >= self.limit:
            self.seen = {n: t for n, t in self.seen.items() if t > now}
            if len(self.seen) >= self.limit:
                raise ApiError(503, "too many peer requests at once; try again", {"Retry-After": "1"})
        self.seen[nonce] = now + 2 * MAX_SKEW
        return True


class SecretCache:
    """The peer secret, read from the registry at most every ``SECRET_TTL`` seconds."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._secret: bytes | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        async with self._lock:
            if self._secret is None or time.monotonic() - self._read_at > SECRET_TTL:
                self._secret = await self._registry.peer_secret()
                self._read_at = time.monotonic()
            return self._secret


def check_signature(
    secret: bytes, nonces: Nonces, method: str, path_qs: str, headers: dict[str, str], now: float
) -> str:
    """The sender's machine id when the request is signed with ``secret``, recent and not
    a replay; else :class:`ApiError` 401 saying which check failed."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    when, nonce, sender = (
        headers.get(TIME_HEADER.lower()),
        headers.get(NONCE_HEADER.lower()),
        headers.get(FROM_HEADER.lower()),
    )
    if scheme != SCHEME or not given or not when or not nonce or not sender:
        raise ApiError(401, f"this is a fleetd peer listener: requests must be signed ({SCHEME})")
    try:
        sent = float(when)
    except ValueError:
        raise ApiError(401, f"{TIME_HEADER}: not a time") from None
    if abs(now - sent) > MAX_SKEW:
        raise ApiError(
            401,
            f"request time {when} is more than {MAX_SKEW:g} s from this machine's clock ({now:.0f}): sync the clocks",
        )
    expected = signature(secret, method, path_qs, sender, when, nonce)
    if not hmac.compare_digest(expected, given.strip()):
        raise ApiError(401, "wrong signature (is the sender in another cluster, or was the peer secret replaced?)")
    if not nonces.first_use(nonce, now):
        raise ApiError(401, "replayed request (this nonce was used before)")
    return sender


# -- the relay ----------------------------------------------------------------------------------


class PeerRelay:
    """Sends a journal or status request on to the fleetd of the unit's machine."""

    def __init__(self, registry: Registry, machine_id: str, port: int = DEFAULT_PEER_PORT) -> None:
        self.machine_id = machine_id
        self.port = port
        self._secrets = SecretCache(registry)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # the environment's proxies must not see (or break) machine-to-machine requests
            self._session = aiohttp.ClientSession(trust_env=False, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def relay(
        self, request: web.Request, machine: MachineState, path_qs: str, stream: bool
    ) -> web.StreamResponse:
        """Ask ``machine``'s peer listener for ``path_qs`` and answer ``request`` with its
        answer: status, exit code and body, streamed as it comes."""
        where = f"{machine.public_ip}:{self.port}"
        try:
            secret = await self._secrets.get()
        except Exception as exc:  # noqa: BLE001 - say why the relay cannot sign
            raise ApiError(503, f"cannot relay to machine {machine.id}: the cluster's peer secret: {exc}") from None
        headers = signed_headers(secret, "GET", path_qs, self.machine_id)
        host = f"[{machine.public_ip}]" if ":" in machine.public_ip else machine.public_ip
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=None if stream else READ_TIMEOUT)
        scheme, context = "http", None
        if machine.peer_cert:  # TLS, trusting only the certificate the machine published
            try:
                context = pinned_context(machine.peer_cert)
            except ValueError as exc:
                raise ApiError(
                    502, f"cannot relay to machine {machine.id}: its record in etcd holds an {exc}"
                ) from None
            scheme = "https"
        url = f"{scheme}://{host}:{self.port}{path_qs}"
        try:
            answer = await self._client().get(url, headers=headers, timeout=timeout, ssl=context or True)
        except aiohttp.ClientSSLError as exc:
            raise ApiError(
                502,
                f"the peer listener of machine {machine.id} at {where} did not present the certificate that "
                f"machine published in etcd ({exc}); is another process answering on that address?",
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(
                502,
                f"cannot reach the fleetd of machine {machine.id} at {where} (its peer_port): "
                f"{exc or type(exc).__name__}; is fleetd running there, with peer_port={self.port}, "
                "and may this machine connect to it?",
            ) from None
        try:
            return await self._answer(request, answer, machine, where)
        finally:
            answer.release()

    async def _answer(
        self, request: web.Request, answer: aiohttp.ClientResponse, machine: MachineState, where: str
    ) -> web.StreamResponse:
        passed = {h: answer.headers[h] for h in PASSED_HEADERS if h in answer.headers}
        if answer.status != 200:
            body = await answer.content.read(ERROR_BODY_LIMIT)
            if answer.status == 401:  # the peer refused *this* fleetd: say so, not "unauthorized"
                raise ApiError(
                    502, f"the fleetd of machine {machine.id} at {where} refused this fleetd: {_message(body)}"
                )
            return web.Response(status=answer.status, body=body, headers=passed)
        response = web.StreamResponse(status=200, headers=passed)
        response.enable_chunked_encoding()
        await response.prepare(request)
        state = request.app[STATE]
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while True:
                try:  # wake up now and then: a quiet follow must still end when its client goes
                    chunk = await asyncio.wait_for(answer.content.readany(), 0.5)
                except TimeoutError:
                    if state.closing or request.transport is None or request.transport.is_closing():
                        return response
                    continue
                if not chunk:
                    break
                await response.write(chunk)
                if state.closing:
                    break
            await response.write_eof()
        return response


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200]


PEER_RELAY = web.AppKey("fleet_peer_relay", PeerRelay)

__all__ = [
    "DEFAULT_PEER_PORT",
    "MAX_SKEW",
    "PEER_RELAY",
    "Nonces",
    "PeerRelay",
    "SecretCache",
    "check_signature",
    "signature",
    "signed_headers",
]

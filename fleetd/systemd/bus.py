"""A connection to systemd over D-Bus: bounded calls, signals, reconnection.

The only module (with the rest of ``fleetd.systemd``) that touches ``dbus_fast``. It knows
just enough of systemd to keep a session useful across a lost bus: after every (re)connect
it installs the signal match rules and calls ``Manager.Subscribe`` (systemd only emits unit
signals while someone is subscribed), then runs the owner's ``on_connected`` hook so the
owner can rebuild whatever it derived from signals it may have missed.

Calls are plain messages (no introspection, no proxy objects), at most ``max_in_flight``
at a time. A call that fails because the connection went away waits for the reconnect and
is sent once more; every method fleet uses on systemd is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

#: The manager's signals the adapter acts on. Not JobNew nor UnitFilesChanged: a start of a
#: thousand units would send a thousand JobNew for nothing.
MANAGER_SIGNALS = ("UnitNew", "UnitRemoved", "JobRemoved", "Reloading")

#: What we listen to: those manager signals, PropertiesChanged of the Unit interface of
#: every unit object (one rule, filtered by path in Python), and systemd's name changing
#: owner (a re-exec or restart of the manager). ``arg0`` keeps the bus from sending the
#: Service/Socket/Slice interfaces' PropertiesChanged: only the Unit interface's
#: ActiveState/SubState matter to us, and the others are about a third of the signals of a
#: burst of starts, each a large message to decode.
MATCH_RULES = (
    *(
        f"type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}',member='{member}'"
        for member in MANAGER_SIGNALS
    ),
    f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',member='PropertiesChanged',"
    f"path_namespace='{UNIT_PATH_PREFIX.rstrip('/')}',arg0='{UNIT}'",
    f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{SYSTEMD}'",
)


class SystemdError(Exception):
    """Something went wrong talking to systemd."""


class SystemdUnavailable(SystemdError):
    """The bus (or systemd on it) cannot be reached right now."""


class SystemdCallError(SystemdError):
    """systemd answered a call with a D-Bus error (e.g. ``org.freedesktop.systemd1.NoSuchUnit``)."""

    def __init__(self, method: str, name: str, text: str) -> None:
        super().__init__(f"{method}: {name}: {text}")
        self.method = method
        self.name = name
        self.text = text


def escape_path_label(name: str) -> str:
    """systemd's object-path label for a unit name (``foo-1.service`` -> ``foo_2d1_2eservice``).

    Every byte that is not an ASCII letter (or a digit after the first position) becomes
    ``_xx`` in lower-case hex, as sd-bus's ``bus_label_escape`` does.
    """
    if not name:
        return "_"
    out = []
    for i, byte in enumerate(name.encode("utf-8")):
        ch = chr(byte)
        if (ch.isascii() and ch.isalpha()) or (i > 0 and ch.isascii() and ch.isdigit()):
            out.append(ch)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def unit_object_path(name: str) -> str:
    """The object path systemd gives the unit ``name``."""
    return UNIT_PATH_PREFIX + escape_path_label(name)


def _uid() -> int:
    return os.getuid()


def default_bus_address(user: bool = False) -> str:
    """Where systemd is: the system bus, or the user's session bus for ``user=True``.

    User: ``$DBUS_SESSION_BUS_ADDRESS``, else ``/run/user/UID/bus``. System:
    ``$DBUS_SYSTEM_BUS_ADDRESS``, else ``/run/dbus/system_bus_socket``.
    """
    if user:
        env = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if env:
            return env
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{_uid()}"
        return f"unix:path={runtime}/bus"
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


SignalHandler = Callable[[Message], None]


class SystemdBus:
    """One (re)connecting session with systemd's manager on a bus.

    ``on_signal(msg)`` runs synchronously for every signal that matches ``MATCH_RULES``;
    ``on_connected()`` (a coroutine) runs after every connect once the matches and the
    Subscribe are in place. ``calls`` counts the method calls sent, by member name;
    ``peak_in_flight`` is the most calls that were ever outstanding at once.
    """

    def __init__(
        self,
        address: str,
        *,
        on_signal: SignalHandler,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        max_in_flight: int = 64,
        call_timeout: float = 60.0,
        reconnect_wait: float = 15.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.address = address
        self._on_signal = on_signal
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.max_in_flight = max_in_flight
        self.call_timeout = call_timeout
        self.reconnect_wait = reconnect_wait
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # calls of call() that failed, by member (for /metrics)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.connects = 0  # successful connects, the first one included
        self._sem = asyncio.Semaphore(max_in_flight)
        self._bus: MessageBus | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None
        self._lost_event = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._bus is not None and self._bus.connected

    async def connect(self) -> None:
        """Connect once (raising when that fails), then keep the session alive."""
        if self._closed:
            raise SystemdError("bus session is closed")
        await self._establish()
        self._supervisor = asyncio.create_task(self._supervise(), name="systemd-bus-supervisor")

    async def close(self) -> None:
        self._closed = True
        self._ready.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._bus.wait_for_disconnect()
            self._bus = None

    def drop(self) -> None:
        """Tear the current connection down (as if the bus went away); it comes back."""
        bus = self._bus
        self._ready.clear()
        if bus is not None:
            bus.disconnect()
        self._lost_event.set()

    async def _establish(self) -> None:
        bus = MessageBus(bus_address=self.address)
        try:
            async with asyncio.timeout(self.call_timeout):
                await bus.connect()
        except (OSError, EOFError) as exc:  # TimeoutError included
            raise SystemdUnavailable(f"cannot connect to {self.address}: {exc or type(exc).__name__}") from exc
        try:
            bus.add_message_handler(self._dispatch)
            for rule in MATCH_RULES:
                await self._raw_call(bus, DBUS, DBUS_PATH, DBUS, "AddMatch", "s", [rule])
            await self.subscribe(bus)
        except BaseException:
            bus.disconnect()
            raise
        self._bus = bus
        self._lost_event.clear()
        self.connects += 1
        self._ready.set()
        if self._on_connected is not None:
            await self._on_connected()

    async def subscribe(self, bus: MessageBus | None = None) -> None:
        """``Manager.Subscribe`` (again): systemd only emits unit signals to subscribers."""
        try:
            if bus is None:
                await self.call("Subscribe")
            else:
                await self._raw_call(bus, SYSTEMD, SYSTEMD_PATH, MANAGER, "Subscribe", "", [])
        except SystemdCallError as exc:
            if exc.name != "org.freedesktop.systemd1.AlreadySubscribed":
                raise

    async def _supervise(self) -> None:
        """Wait for the connection to end; reconnect with backoff until closed."""
        while not self._closed:
            bus = self._bus
            if bus is not None:
                # shielded: cancelling our waiter must not cancel the bus's own future
                waiter = asyncio.shield(bus.wait_for_disconnect())
                lost = asyncio.ensure_future(self._lost_event.wait())
                try:
                    await asyncio.wait([waiter, lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for fut in (waiter, lost):
                        fut.cancel()
                    for fut in (waiter, lost):
                        with contextlib.suppress(BaseException):
                            await fut
                if self._closed:
                    return
                bus.disconnect()
            self._ready.clear()
            self._bus = None
            log.warning("lost the D-Bus connection to systemd (%s); reconnecting", self.address)
            if self._on_disconnected is not None:
                with contextlib.suppress(Exception):
                    self._on_disconnected()
            delay = 0.05
            while not self._closed:
                try:
                    await self._establish()
                    log.info("reconnected to systemd on %s", self.address)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep trying until closed
                    if self._bus is not None:  # connected, but the owner's hook failed
                        log.warning("refresh after reconnect failed: %s", exc)
                        break
                    log.info("reconnect to %s failed (%s); retrying in %.2fs", self.address, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

    # -- messages ------------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> bool:
        # Runs for every incoming message; must not claim replies (returning truthy would
        # keep them from their callers).
        if msg.message_type is MessageType.SIGNAL:
            try:
                self._on_signal(msg)
            except Exception:
                log.exception("handling %s.%s failed", msg.interface, msg.member)
        return False

    async def _raw_call(
        self,
        bus: MessageBus,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: Sequence[Any],
        timeout: float | None = None,
    ) -> list[Any]:
        self.calls[member] += 1
        msg = Message(
            destination=destination, path=path, interface=interface, member=member, signature=signature, body=list(body)
        )
        try:
            async with asyncio.timeout(timeout or self.call_timeout):
                reply = await bus.call(msg)
        except TimeoutError:
            raise SystemdError(f"{member}: no reply from systemd within {timeout or self.call_timeout:g}s") from None
        except (OSError, EOFError) as exc:  # the connection broke under the call
            raise SystemdUnavailable(f"{member}: {exc or type(exc).__name__}") from exc
        if reply is None:
            raise SystemdUnavailable(f"{member}: connection closed")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise SystemdCallError(member, reply.error_name or "unknown", text)
        return list(reply.body)

    async def _wait_ready(self) -> MessageBus:
        if self._closed:
            raise SystemdUnavailable("bus session is closed")
        if not self.connected:
            try:
                async with asyncio.timeout(self.reconnect_wait):
                    while not self.connected:
                        await self._ready.wait()
                        if not self.connected:
                            await asyncio.sleep(0.01)
            except TimeoutError:
                raise SystemdUnavailable(f"systemd unreachable on {self.address}") from None
        assert self._bus is not None
        return self._bus

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        path: str = SYSTEMD_PATH,
        interface: str = MANAGER,
        timeout: float | None = None,
    ) -> list[Any]:
        """Call a method of systemd (the Manager by default); returns the reply's body.

        Raises SystemdCallError for an error reply and SystemdUnavailable when the bus is
        gone and does not come back within ``reconnect_wait``.
        """
        for attempt in (1, 2):
            bus = await self._wait_ready()
            async with self._sem:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    if not bus.connected:
                        raise SystemdUnavailable(f"{member}: not connected")
                    return await self._raw_call(bus, SYSTEMD, path, interface, member, signature, body, timeout)
                except SystemdUnavailable:
                    self.errors[member] += 1
                    if self._closed or attempt == 2:
                        raise
                    if self._bus is bus:
                        self.drop()
                except SystemdError:
                    self.errors[member] += 1
                    raise
                finally:
                    self.in_flight -= 1
        raise AssertionError("unreachable")

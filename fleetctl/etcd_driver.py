"""``--driver etcd``: the :class:`~fleetctl.client.Cluster` operations straight on etcd.

Imported only for that driver (it pulls in aetcd and grpc through the registry). It gives
the same records as the API: a unit's ``currentState`` and ``machineID`` are derived from
the placements and the published unit states by the same functions fleetd's API uses
(:mod:`fleetd.model.wire`), and writes follow the API's rules for ``PUT /units``
(:mod:`fleetd.model.submit`), so both drivers accept, refuse and show the same. Journal and
status still come from each machine's own fleetd API (etcd does not hold them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from fleetctl.client import Record, UnitWrite
from fleetctl.config import DEFAULT_ENDPOINT, Config, Endpoint, parse_endpoint
from fleetctl.errors import FleetctlError, NotReachable
from fleetctl.transport import Transport, learnt_transport
from fleetd.model.batch import BatchError
from fleetd.model.history import event_json
from fleetd.model.revisions import revision_json
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.submit import SubmitError, desired_state, submission
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import ORIGIN_ROLLBACK, ORIGIN_UPDATE, UpdateError, check_params, update_json
from fleetd.model.wire import machine_json, select_states, state_json, units_json, unreadable_unit_json
from fleetd.registry import is_unavailable
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.registry import RegistryError

T = TypeVar("T")
NOT_WRITTEN = "not written: the batch it was in was refused (see the other errors)"


# a revision written by this driver says so (the API's say "API (fleetctl)")
ORIGIN = "fleetctl --driver etcd"


class EtcdClient:
    def __init__(self, config: Config) -> None:
        self.config = config
        endpoints = tuple(config.endpoints())
        for endpoint in endpoints:
            if endpoint.startswith("unix:"):
                raise FleetctlError(
                    f"--driver etcd needs etcd URLs in --endpoint (e.g. http://127.0.0.1:2379), not {endpoint}"
                )
        self.loop = asyncio.new_event_loop()
        self.registry = connect(
            EtcdConfig(
                endpoints=endpoints,
                ca_file=config.ca_file,
                cert_file=config.cert_file,
                key_file=config.key_file,
                request_timeout=config.request_timeout or 3.0,
            ),
            config.etcd_key_prefix,
        )
        self.endpoint_text = ",".join(endpoints)

    def _run(self, coro: Any, extra: float = 0.0) -> Any:
        """Run one operation on the loop, bounded by the request timeout (plus ``extra``
        seconds for an operation that waits on purpose)."""
        timeout = (self.config.request_timeout or 3.0) * 3 + 2 + extra

        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        try:
            return self.loop.run_until_complete(bounded())
        except FleetctlError:
            raise
        except (RegistryError, SubmitError) as exc:
            raise FleetctlError(str(exc)) from None
        except (TimeoutError, OSError) as exc:
            raise NotReachable(self._unreachable(exc)) from None
        except Exception as exc:
            if is_unavailable(exc):  # the etcd client's own failures: say where and why
                raise NotReachable(self._unreachable(exc)) from None
            raise

    def _unreachable(self, exc: BaseException) -> str:
        reason = str(exc) or type(exc).__name__
        return (
            f"etcd isn't reachable at {self.endpoint_text} ({reason}). With --driver etcd, --endpoint "
            "(or FLEETCTL_ENDPOINT) lists etcd's client URLs, e.g. http://127.0.0.1:2379."
        )

    # reads ------------------------------------------------------------------------------

    def machines(self) -> list[Record]:
        return [machine_json(m) for m in self._run(self.registry.machines())]

    def units(self) -> list[Record]:
        async def read() -> tuple[tuple[list[StoredUnit], dict[str, str]], dict[str, list[str]], list[UnitState]]:
            registry = self.registry
            return await asyncio.gather(registry.units_with_errors(), registry.placements(), registry.unit_states())

        (units, unreadable), placements, states = self._run(read())
        records = units_json(units, placements, states)
        records += [unreadable_unit_json(name, reason) for name, reason in unreadable.items()]
        return sorted(records, key=lambda u: u["name"])

    def unit(self, name: str) -> Record | None:
        async def read() -> tuple[StoredUnit | None, dict[str, list[str]], list[UnitState]]:
            return await asyncio.gather(
                self.registry.get_unit(name), self.registry.placements(), self.registry.unit_states(name)
            )

        unit, placements, states = self._run(read())
        if unit is None:
            return None
        return units_json([unit], placements, states)[0]

    def states(self, unit: str | None = None, machine: str | None = None) -> list[Record]:
        states = self._run(self.registry.unit_states(unit))
        return [state_json(s) for s in select_states(states, unit, machine)]

    def unplaceable(self) -> dict[str, str]:
        return dict(self._run(self.registry.unplaceable()))

    # writes: the API's rules for PUT /units (fleetd.model.submit), on the registry -----

    def _put(self, name: str, options: list[Record] | None, desired: str, replace: bool) -> None:
        """One unit write, refused here (before any I/O) when the request is invalid."""
        try:
            request = submission(name, desired_state(desired), options, replace=replace, origin=ORIGIN)
        except SubmitError as exc:
            raise FleetctlError(str(exc)) from None
        self._run(self.registry.submit(request))

    def create_unit(self, name: str, options: list[Record], desired: str) -> None:
        self._put(name, options, desired, replace=False)

    def set_desired(self, name: str, desired: str) -> None:
        self._put(name, None, desired, replace=False)

    def replace_unit(self, name: str, options: list[Record], desired: str) -> None:
        self._put(name, options, desired, replace=True)

    def destroy_unit(self, name: str) -> bool:
        return bool(self._run(self.registry.destroy_unit(name)))

    def write_units(self, writes: Sequence[UnitWrite]) -> dict[str, str]:
        """The batch as ``POST /units:batch`` does it: every unit checked and decided
        before anything is written (Registry.submit_many), every refusal per unit."""
        failures: dict[str, str] = {}
        requests = []
        for write in writes:
            try:
                requests.append(
                    submission(
                        write.name, desired_state(write.desired), write.options, replace=write.replace, origin=ORIGIN
                    )
                )
            except SubmitError as exc:
                failures[write.name] = str(exc)
        if failures:
            return {w.name: failures.get(w.name) or NOT_WRITTEN for w in writes}
        if not requests:
            return {}

        async def submit() -> BatchError | list[Any]:
            try:
                return await self.registry.submit_many(requests)
            except BatchError as exc:
                return exc

        refused = self._run(submit(), extra=len(requests) / 100)
        if not isinstance(refused, BatchError):
            return {}
        problems = {p.name: p.message for p in refused.problems}
        written = set(refused.written)
        return {w.name: problems.get(w.name) or NOT_WRITTEN for w in writes if w.name not in written}

    def destroy_units(self, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        return list(self._run(self.registry.destroy_units(names), extra=len(names) / 100)), {}

    def revisions(self, name: str) -> list[Record] | None:
        found = self._run(self.registry.revisions(name))
        if not found and self._run(self.registry.get_unit(name)) is None:
            return None
        return [revision_json(r) for r in found]

    def unit_revision(self, name: str, number: int) -> Record | None:
        found = self._run(self.registry.unit_revision(name, number))
        return None if found is None else {"name": name, **revision_json(found, with_options=True)}

    def start_update(self, name: str, body: Record) -> Record:
        """As ``POST /updates/{name}`` does it (fleetctl builds a valid body)."""
        try:
            params = check_params(
                body.get("maxParallel", 1),
                body.get("minHealthy", 10.0),
                body.get("healthyDeadline", 300.0),
                body.get("autoRevert", True),
            )
            if "options" in body:
                target, kind, number = UnitFile.from_options(body["options"]), ORIGIN_UPDATE, None
            else:
                wanted = body.get("revision")
                target, number = self._run(
                    self.registry.rollback_target(name, None if wanted == "previous" else int(wanted))
                )
                kind = ORIGIN_ROLLBACK
            record, _ = self._run(
                self.registry.begin_update(
                    name, target, params, time.time(), kind=kind, target_revision=number, origin=ORIGIN
                )
            )
        except UpdateError as exc:
            raise FleetctlError(str(exc)) from None
        return update_json(record)

    def update_record(self, name: str) -> Record | None:
        found = self._run(self.registry.get_update(name))
        return None if found is None else update_json(found[0])

    def events(self, unit: str | None = None) -> list[Record]:
        result: list[Record] = []
        after = ""
        while True:
            found, after, _ = self._run(self.registry.events(after, 1000, unit))
            result += [event_json(e) for e in found]
            if not after:
                return result

    def follow_events(self, unit: str | None = None) -> Iterator[Record]:
        """The stored events, then an etcd watch from the revision of the first read."""
        after, revision, shown = "", 0, ""
        while True:
            found, after, seen = self._run(self.registry.events(after, 1000, unit))
            revision = revision or seen
            for event in found:
                shown = max(shown, event.id)
                yield event_json(event)
            if not after:
                break
        watch = self.registry.watch_events(revision + 1).__aiter__()
        try:
            while True:
                batch = self.loop.run_until_complete(anext(watch))
                for event in batch:
                    if event.id > shown and (unit is None or event.unit == unit):
                        shown = event.id
                        yield event_json(event)
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(watch.aclose())  # type: ignore[attr-defined]

    def wait_states(
        self, index: int | None, timeout: float, unit: str | None = None
    ) -> tuple[list[Record], int | None]:
        """A watch of etcd after ``index`` (Registry.wait_unit_changes), bounded by
        ``timeout``, then the states and the revision they were read at."""

        async def read() -> tuple[list[UnitState], int]:
            if index is not None:
                try:
                    await asyncio.wait_for(self.registry.wait_unit_changes(index), max(0.0, timeout))
                except TimeoutError:
                    pass
            return await self.registry.unit_states_at(unit)

        states, revision = self._run(read(), extra=max(0.0, timeout))
        return [state_json(s) for s in select_states(states, unit, None)], revision

    def bulk(self, calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
        results: list[T | BaseException] = []
        for call in calls:
            try:
                results.append(call())
            except FleetctlError as exc:
                results.append(exc)
        return results

    def node_transports(self, machine: Record) -> list[Transport]:
        """The local fleetd's socket first (it relays to the unit's machine, as with the
        API driver), then that machine's own API at its IP."""
        timeout = self.config.request_timeout or None
        local = parse_endpoint(DEFAULT_ENDPOINT)
        result = [Transport(local, timeout=timeout, debug=self.config.debug)]
        ip = machine.get("primaryIP") or ""
        if ip:
            endpoint: Endpoint = local.on_host(ip)
            # learnt from etcd, and no API endpoint was given: the token only over TLS
            token = self.config.bearer_token()
            result.append(learnt_transport(endpoint, [], token, timeout=timeout, debug=self.config.debug))
        return result

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.registry.close())
        except Exception:  # noqa: BLE001 - closing: nothing left to report
            pass
        finally:
            self.loop.close()


__all__ = ["EtcdClient"]

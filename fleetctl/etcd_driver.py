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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fleetctl.client import Record
from fleetctl.config import DEFAULT_ENDPOINT, Config, Endpoint, parse_endpoint
from fleetctl.errors import FleetctlError, NotReachable
from fleetctl.transport import Transport, learnt_transport
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.submit import SubmitError, desired_state, submission
from fleetd.model.wire import machine_json, select_states, state_json, units_json, unreadable_unit_json
from fleetd.registry import is_unavailable
from fleetd.registry.etcd import EtcdConfig
from fleetd.registry.etcd_registry import connect
from fleetd.registry.registry import RegistryError

T = TypeVar("T")


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

    def _run(self, coro: Any) -> Any:
        timeout = (self.config.request_timeout or 3.0) * 3 + 2

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
            request = submission(name, desired_state(desired), options, replace=replace)
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

    def bulk(self, calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
        results: list[T | BaseException] = []
        for call in calls:
            try:
                results.append(call())
            except FleetctlError as exc:
                results.append(exc)
        return results

    def node_transports(self, machine: Record) -> list[Transport]:
        ip = machine.get("primaryIP") or ""
        if not ip:
            return []
        endpoint: Endpoint = parse_endpoint(DEFAULT_ENDPOINT).on_host(ip)
        timeout = self.config.request_timeout or None
        # learnt from etcd, and no API endpoint was given: the token only over TLS
        token = self.config.bearer_token()
        return [learnt_transport(endpoint, [], token, timeout=timeout, debug=self.config.debug)]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.registry.close())
        except Exception:  # noqa: BLE001 - closing: nothing left to report
            pass
        finally:
            self.loop.close()


__all__ = ["EtcdClient"]

"""``--driver etcd``: the :class:`~fleetctl.client.Cluster` operations straight on etcd.

Imported only for that driver (it pulls in aetcd and grpc through the registry). It gives
the same records as the API: a unit's ``currentState`` and ``machineID`` are derived from
the placements and the published unit states exactly as fleetd's API derives them, and
writes are validated with the same model checks, so both drivers behave alike. Journal and
status still come from each machine's own fleetd API (etcd does not hold them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fleetctl.client import Record, Transport
from fleetctl.config import DEFAULT_ENDPOINT, Config, Endpoint, parse_endpoint
from fleetctl.errors import FleetctlError, NotReachable
from fleetd.model.errors import UnitFileError, UnitNameError
from fleetd.model.state import StoredUnit, UnitState
from fleetd.model.unit import DesiredState, build_unit
from fleetd.model.unitfile import UnitFile
from fleetd.model.wire import machine_json, state_json, states_by_unit, unit_json
from fleetd.registry.etcd import Etcd, EtcdConfig
from fleetd.registry.registry import Registry, RegistryError, UnitExists

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
        self.etcd = Etcd(
            EtcdConfig(
                endpoints=endpoints,
                ca_file=config.ca_file,
                cert_file=config.cert_file,
                key_file=config.key_file,
                request_timeout=config.request_timeout or 3.0,
            )
        )
        self.registry = Registry(self.etcd, config.etcd_key_prefix)
        self.endpoint_text = ",".join(endpoints)

    def _run(self, coro: Any) -> Any:
        timeout = (self.config.request_timeout or 3.0) * 3 + 2

        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        try:
            return self.loop.run_until_complete(bounded())
        except FleetctlError:
            raise
        except RegistryError as exc:
            raise FleetctlError(str(exc)) from None
        except (TimeoutError, OSError) as exc:
            raise NotReachable(self._unreachable(exc)) from None
        except Exception as exc:  # noqa: BLE001 - aetcd/grpc failures: say where and why
            module = type(exc).__module__.split(".")[0]
            if module in ("aetcd", "grpc"):
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
        async def read() -> tuple[list[StoredUnit], dict[str, list[str]], list[UnitState]]:
            return await asyncio.gather(
                self.registry.units(), self.registry.placements(), self.registry.unit_states()
            )

        units, placements, states = self._run(read())
        by_unit = states_by_unit(states)
        return [unit_json(u, sorted(placements.get(u.name, [])), by_unit.get(u.name, {})) for u in units]

    def unit(self, name: str) -> Record | None:
        async def read() -> tuple[StoredUnit | None, dict[str, list[str]], list[UnitState]]:
            return await asyncio.gather(
                self.registry.get_unit(name), self.registry.placements(), self.registry.unit_states(name)
            )

        unit, placements, states = self._run(read())
        if unit is None:
            return None
        by_machine = {s.machine_id: s for s in states if s.name == name}
        return unit_json(unit, sorted(placements.get(name, [])), by_machine)

    def states(self, unit: str | None = None, machine: str | None = None) -> list[Record]:
        states = self._run(self.registry.unit_states(unit))
        return [
            state_json(s)
            for s in states
            if (unit is None or s.name == unit) and (machine is None or s.machine_id == machine)
        ]

    def unplaceable(self) -> dict[str, str]:
        return dict(self._run(self.registry.unplaceable()))

    # writes -----------------------------------------------------------------------------

    def _build(self, name: str, options: list[Record]) -> tuple[UnitFile, bool]:
        try:
            file = UnitFile.from_options(options)
            unit, _ = build_unit(name, file)
        except (UnitFileError, UnitNameError) as exc:
            raise FleetctlError(f"unit {name}: {exc}") from None
        return file, unit.requirements.global_

    def create_unit(self, name: str, options: list[Record], desired: str) -> None:
        file, is_global = self._build(name, options)
        try:
            self._run(self.registry.create_unit(StoredUnit(name, file, DesiredState(desired)), is_global))
        except UnitExists:
            existing = self._run(self.registry.get_unit(name))
            if existing is None or existing.file != file:
                raise FleetctlError(f"unit {name} already exists with different contents; use --replace") from None
            self.set_desired(name, desired)

    def set_desired(self, name: str, desired: str) -> None:
        self._run(self.registry.set_desired_state(name, DesiredState(desired)))

    def replace_unit(self, name: str, options: list[Record], desired: str) -> None:
        file, is_global = self._build(name, options)
        self._run(self.registry.replace_unit(StoredUnit(name, file, DesiredState(desired)), is_global))

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
        return [Transport(endpoint, timeout=self.config.request_timeout or None, token=self.config.api_token, debug=self.config.debug)]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.etcd.close())
        except Exception:  # noqa: BLE001 - closing: nothing left to report
            pass
        finally:
            self.loop.close()


__all__ = ["EtcdClient"]

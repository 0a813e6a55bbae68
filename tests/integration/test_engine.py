"""Engine and agents on a real etcd (agents use the in-memory service manager).

Placement, machine loss, leader failover, fenced writes and unplaceable reasons, end to
end through the registry: every assertion is about what the agents actually run.
"""

from __future__ import annotations

import time

import pytest

from fleetd.model.submit import submission
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import parse_unit_file
from fleetd.registry.registry import NotLeader
from fleetlab.simcluster import SimCluster
from fleetlab.wait import eventually, wait_until_async

pytestmark = pytest.mark.integration

SLEEP = "[Service]\nExecStart=/bin/sleep infinity\n"


def with_fleet(*lines: str) -> str:
    return SLEEP + "[X-Fleet]\n" + "".join(line + "\n" for line in lines)


async def three_machines(sim: SimCluster) -> list[str]:
    ids = []
    for index, region in enumerate(("us", "us", "eu")):
        machine = await sim.add_machine({"region": region, "n": str(index)})
        ids.append(machine.id)
    await sim.add_engine()
    return ids


async def test_units_are_placed_spread_and_run_once(sim: SimCluster) -> None:
    await three_machines(sim)
    for i in range(6):
        await sim.submit(f"web{i}.service", SLEEP)
    await wait_until_async(lambda: len(sim.placement()) == 6, 10, "6 units running")
    placement = sim.placement()
    assert all(len(ids) == 1 for ids in placement.values())
    per_machine = sorted(sum(1 for ids in placement.values() if m in ids) for m in sim.machines)
    assert per_machine == [2, 2, 2]  # least loaded spreads them evenly


async def test_loaded_units_are_loaded_not_started(sim: SimCluster) -> None:
    await three_machines(sim)
    await sim.submit("idle.service", SLEEP, DesiredState.LOADED)
    await wait_until_async(
        lambda: any("idle.service" in m.manager.files for m in sim.machines.values()), 10, "unit loaded"
    )
    assert sim.where("idle.service") == []


async def test_machine_loss_moves_only_its_units(sim: SimCluster) -> None:
    await three_machines(sim)
    for i in range(6):
        await sim.submit(f"app{i}.service", SLEEP)
    await wait_until_async(lambda: len(sim.placement()) == 6, 10, "6 units running")
    before = sim.placement()
    victim = next(iter(sim.machines))
    moved = {name for name, ids in before.items() if victim in ids}
    await sim.crash_machine(victim)
    crashed_at = time.monotonic()
    await wait_until_async(
        lambda: len(sim.placement()) == 6 and all(victim not in ids for ids in sim.placement().values()),
        sim.settings.agent_ttl + 5,
        "units of the crashed machine to run elsewhere",
    )
    took = time.monotonic() - crashed_at
    after = sim.placement()
    for name, ids in before.items():
        if name not in moved:
            assert after[name] == ids, f"{name} moved although its machine is alive"
    assert took < sim.settings.agent_ttl + 2


async def test_leader_failover_and_new_leader_places(sim: SimCluster) -> None:
    await three_machines(sim)
    second = await sim.add_engine("standby")
    await wait_until_async(lambda: sim.leader() is not None, 10, "a leader")
    first = sim.leader()
    assert first is not None
    await sim.submit("before.service", SLEEP)
    await wait_until_async(lambda: bool(sim.where("before.service")), 10, "before.service running")
    await sim.crash_engine(first)
    await wait_until_async(
        lambda: sim.leader() is not None and sim.leader() is not first, sim.settings.engine_ttl + 5, "a new leader"
    )
    assert sim.leader() in (second, *sim.engines)
    await sim.submit("after.service", SLEEP)
    await wait_until_async(lambda: bool(sim.where("after.service")), 10, "after.service placed by the new leader")
    assert len(sim.where("before.service")) == 1


async def test_unplaceable_unit_carries_a_reason(sim: SimCluster) -> None:
    await three_machines(sim)
    await sim.submit("eu-only.service", with_fleet("MachineMetadata=region=ap"))
    registry = sim.registry()

    async def reason() -> str | None:
        return (await registry.unplaceable()).get("eu-only.service")

    found = await eventually(reason, 10, "an unplaceable reason")
    assert "region=ap" in found, found
    assert sim.where("eu-only.service") == []


async def test_conflicting_units_spread_and_the_rest_wait(sim: SimCluster) -> None:
    await three_machines(sim)
    for i in range(5):
        await sim.submit(f"db{i}.service", with_fleet("Conflicts=db*"))
    await wait_until_async(lambda: len(sim.placement()) == 3, 10, "3 conflicting units placed")
    placement = sim.placement()
    machines_used = [ids[0] for ids in placement.values()]
    assert len(set(machines_used)) == 3
    registry = sim.registry()

    async def two_reasons() -> dict[str, str] | None:
        reasons = {n: r for n, r in (await registry.unplaceable()).items() if n.startswith("db")}
        return reasons if len(reasons) == 2 else None

    reasons = await eventually(two_reasons, 10, "reasons for the 2 units left over")
    assert all("conflict" in r for r in reasons.values()), reasons


async def test_machine_of_follows_its_target(sim: SimCluster) -> None:
    await three_machines(sim)
    await sim.submit("db.service", SLEEP)
    await sim.submit("backup.service", with_fleet("MachineOf=db.service"))
    await wait_until_async(lambda: len(sim.placement()) == 2, 10, "both running")
    assert sim.where("db.service") == sim.where("backup.service")
    await sim.crash_machine(sim.where("db.service")[0])
    await wait_until_async(
        lambda: len(sim.placement()) == 2 and sim.where("db.service") == sim.where("backup.service"),
        sim.settings.agent_ttl + 5,
        "both moved together",
    )


async def test_global_unit_runs_everywhere_that_matches(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    await sim.submit("everywhere.service", with_fleet("Global=true"))
    await sim.submit("us-only.service", with_fleet("Global=true", "MachineMetadata=region=us"))
    await wait_until_async(lambda: len(sim.where("everywhere.service")) == 3, 10, "global on all 3")
    await wait_until_async(lambda: len(sim.where("us-only.service")) == 2, 10, "global on the 2 us machines")
    assert ids[2] not in sim.where("us-only.service")
    joined = await sim.add_machine({"region": "us"})
    await wait_until_async(lambda: joined.id in sim.where("us-only.service"), 10, "new machine gets the global")


async def test_desired_state_changes_reach_the_agent(sim: SimCluster) -> None:
    await three_machines(sim)
    await sim.submit("svc.service", SLEEP)
    await wait_until_async(lambda: bool(sim.where("svc.service")), 10, "running")
    registry = sim.registry()
    await registry.set_desired_state("svc.service", DesiredState.LOADED)
    await wait_until_async(lambda: not sim.where("svc.service"), 10, "stopped")
    assert any("svc.service" in m.manager.files for m in sim.machines.values())
    await registry.set_desired_state("svc.service", DesiredState.INACTIVE)
    await wait_until_async(
        lambda: not any("svc.service" in m.manager.files for m in sim.machines.values()), 10, "unloaded"
    )
    await registry.destroy_unit("svc.service")
    assert await registry.placements() == {}


async def test_machine_id_pins_a_unit(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    await sim.submit("pinned.service", with_fleet(f"MachineID={ids[1]}"))
    await sim.submit("prefix.service", with_fleet(f"MachineID={ids[2][:8]}"))
    await wait_until_async(lambda: len(sim.placement()) == 2, 10, "pinned units running")
    assert sim.where("pinned.service") == [ids[1]]
    assert sim.where("prefix.service") == [ids[2]]


async def test_replaces_moves_the_replaced_unit_away(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    await sim.submit("old.service", with_fleet(f"MachineID={ids[0]}"))
    await wait_until_async(lambda: sim.where("old.service") == [ids[0]], 10, "old.service on machine 0")
    await sim.submit("filler1.service", with_fleet(f"MachineID={ids[1]}"))
    await sim.submit("filler2.service", with_fleet(f"MachineID={ids[2]}"))
    await sim.submit("new.service", with_fleet("Replaces=old.service"))
    await wait_until_async(lambda: sim.where("new.service") == [ids[0]], 10, "new.service where old.service was")
    # old.service is pinned to machine 0, so replaced it has nowhere to go: unplaced, with a reason
    await wait_until_async(lambda: sim.where("old.service") == [], 10, "old.service moved off")
    registry = sim.registry()

    async def reason() -> str | None:
        return (await registry.unplaceable()).get("old.service")

    assert await eventually(reason, 10, "a reason for old.service")


async def test_template_with_specifiers_in_x_fleet_places_its_instances(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    registry = sim.registry()
    template = with_fleet("MachineMetadata=n=%i")
    # The template goes through the one write path (submit decides), then its instances
    # are made from it without options, as fleetctl start meta@2.service does.
    file = parse_unit_file(template, "meta@.service")
    await registry.submit(submission("meta@.service", DesiredState.INACTIVE, file.to_options()))
    for index in (2, 0):
        await registry.submit(submission(f"meta@{index}.service", DesiredState.LAUNCHED, []))
    await wait_until_async(lambda: len(sim.placement()) == 2, 10, "both instances running")
    assert sim.where("meta@2.service") == [ids[2]]
    assert sim.where("meta@0.service") == [ids[0]]
    assert sim.where("meta@.service") == []
    assert "meta@.service" not in await registry.unplaceable()


async def test_units_replacing_each_other_run_one_at_a_time(sim: SimCluster) -> None:
    # fleet's TestScheduleCircularReplace: of two units that replace each other only one
    # may be active; here the one already running stays.
    await three_machines(sim)
    await sim.submit("replace.0.service", with_fleet("Replaces=replace-kick0.service"))
    await wait_until_async(lambda: len(sim.where("replace.0.service")) == 1, 10, "replace.0 running")
    running = sim.where("replace.0.service")
    await sim.submit("replace-kick0.service", with_fleet("Replaces=replace.0.service"))
    registry = sim.registry()

    async def reason() -> str | None:
        return (await registry.unplaceable()).get("replace-kick0.service")

    found = await eventually(reason, 10, "an unplaceable reason for replace-kick0")
    assert "Replaces cycle: replace-kick0.service -> replace.0.service" in found, found
    assert sim.where("replace-kick0.service") == []
    assert sim.where("replace.0.service") == running


async def test_a_deposed_engine_cannot_write(sim: SimCluster) -> None:
    await three_machines(sim)
    await wait_until_async(lambda: sim.leader() is not None, 10, "a leader")
    old = sim.leader()
    assert old is not None and old.engine.leadership is not None
    stale = old.engine.leadership
    await sim.submit("early.service", SLEEP)
    await wait_until_async(lambda: bool(sim.where("early.service")), 10, "early.service placed")
    # the old leader is cut off: its lease is gone, and a new engine wins
    await sim.crash_engine(old)
    await sim.registry().revoke_lease(stale.lease)
    await sim.add_engine("successor")
    await wait_until_async(lambda: sim.leader() is not None, 10, "the successor to lead")
    await sim.submit("late.service", SLEEP, DesiredState.LAUNCHED)
    await wait_until_async(lambda: bool(sim.where("late.service")), 10, "late.service placed by the successor")
    registry = sim.registry()
    before = await registry.placements()
    # the deposed engine wakes up believing early.service is unplaced; its write is refused
    old.engine.view.stored.clear()
    with pytest.raises(NotLeader):
        await old.engine._reconcile(stale)
    assert await registry.placements() == before


async def test_dynamic_metadata_reaches_the_scheduler(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    await sim.submit("gpu.service", with_fleet("MachineMetadata=gpu=yes"))
    registry = sim.registry()

    async def unplaceable() -> str | None:
        return (await registry.unplaceable()).get("gpu.service")

    assert "gpu=yes" in await eventually(unplaceable, 10, "gpu.service to be unplaceable")
    await registry.update_dynamic_metadata(ids[1], {"gpu": "yes"})
    await wait_until_async(lambda: sim.where("gpu.service") == [ids[1]], 10, "gpu.service on the machine given gpu=yes")
    machine = next(m for m in await registry.machines() if m.id == ids[1])
    assert machine.metadata == {"region": "us", "n": "1", "gpu": "yes"}
    await registry.update_dynamic_metadata(ids[1], {}, remove=["gpu"])
    await wait_until_async(lambda: sim.where("gpu.service") == [], 10, "gpu.service unplaced once gpu is removed")


async def test_restarted_agent_adopts_its_lease_and_units(sim: SimCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from fleetd.agent.agent import Agent
    from fleetd.model.state import MachineState
    from fleetlab.simulated import SimulatedManager

    await three_machines(sim)
    manager = SimulatedManager()  # stands for systemd, which outlives fleetd
    machine = MachineState("f" * 32, "", {"region": "us"})
    lease_file = str(tmp_path / "agent.lease")
    first = Agent(sim.registry(), manager, machine, sim.settings, lease_file=lease_file)
    task = asyncio.create_task(first.run())
    await wait_until_async(first.ready.is_set, 10, "first agent")
    await sim.submit("pinned.service", with_fleet(f"MachineID={'f' * 32}"))
    await wait_until_async(
        lambda: "pinned.service" in manager.states and manager.states["pinned.service"].active == "active",
        10,
        "pinned running",
    )
    lease = first.status.lease
    task.cancel()  # fleetd killed
    with pytest.raises(asyncio.CancelledError):
        await task
    # a different fleetd claiming the same machine id is refused while the lease lives
    impostor = Agent(sim.registry(), SimulatedManager(), machine, sim.settings)
    impostor_task = asyncio.create_task(impostor.run())
    await wait_until_async(lambda: impostor.status.error is not None, 10, "the impostor to be refused")
    assert "already registered" in (impostor.status.error or "")
    impostor_task.cancel()
    # the restarted fleetd adopts its own registration: same lease, unit not restarted
    second = Agent(sim.registry(), manager, machine, sim.settings, lease_file=lease_file)
    second_task = asyncio.create_task(second.run())
    try:
        await wait_until_async(second.ready.is_set, 10, "second agent")
        assert second.status.lease == lease and second.status.error is None
        assert manager.starts["pinned.service"] == 1
    finally:
        second_task.cancel()


async def test_agent_that_loses_its_lease_registers_again(sim: SimCluster) -> None:
    ids = await three_machines(sim)
    await sim.submit("mine.service", with_fleet(f"MachineID={ids[0]}"))
    await wait_until_async(lambda: sim.where("mine.service") == [ids[0]], 10, "mine.service running")
    agent = sim.machines[ids[0]].agent
    old_lease = agent.status.lease
    registry = sim.registry()
    # the lease vanishes (as after a long etcd outage): entry and states go with it
    await registry.revoke_lease(old_lease)

    async def back() -> bool:
        machines = {m.id for m in await registry.machines()}
        states = {(s.name, s.machine_id) for s in await registry.unit_states()}
        return ids[0] in machines and ("mine.service", ids[0]) in states

    await eventually(back, sim.settings.agent_ttl * 3, "the agent to register and publish again")
    assert agent.status.lease != old_lease and agent.status.registered
    assert sim.where("mine.service") == [ids[0]]

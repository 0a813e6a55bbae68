"""The etcd key layout: the one place that knows where each kind of record lives.

```
<prefix>units/<name>                unit body + desired state (written by clients)
<prefix>global/<name>               copy of each global unit (every agent watches this)
<prefix>machines/<id>               machine entry                  (agent's lease)
<prefix>machine-metadata/<id>       dynamic metadata set through the API (no lease)
<prefix>schedule/<id>/<name>        placement with body + desired  (written by the engine)
<prefix>states/<name>/<id>          systemd state of a unit        (agent's lease)
<prefix>engine/leader               engine leadership              (engine's lease)
<prefix>engine/unplaceable/<name>   why the engine cannot place a unit (engine-written)
<prefix>peer/secret                 key that signs requests between fleetds (created once)
<prefix>events/<id>                 history: one decision each, ids in time order (pruned)
<prefix>revisions/<name>/<n>        a unit's bodies, n zero-padded (the newest few kept)
<prefix>updates/<name>              a rolling update of a unit or template (engine-driven)
```

Per-machine schedule prefixes let an agent watch only its own placements; the engine
watches units, machines and schedule but never the chatty states.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/_coreos.com/fleet/"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")

    # prefixes
    @property
    def units(self) -> str:
        return f"{self.prefix}units/"

    @property
    def globals(self) -> str:
        return f"{self.prefix}global/"

    @property
    def machines(self) -> str:
        return f"{self.prefix}machines/"

    @property
    def machine_metadata_prefix(self) -> str:
        return f"{self.prefix}machine-metadata/"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule/"

    @property
    def states(self) -> str:
        return f"{self.prefix}states/"

    @property
    def leader(self) -> str:
        return f"{self.prefix}engine/leader"

    @property
    def unplaceable_prefix(self) -> str:
        return f"{self.prefix}engine/unplaceable/"

    def revisions(self, name: str) -> str:
        return f"{self.prefix}revisions/{name}/"

    def revision(self, name: str, number: int) -> str:
        return f"{self.prefix}revisions/{name}/{number:010d}"

    @property
    def updates(self) -> str:
        return f"{self.prefix}updates/"

    def update(self, name: str) -> str:
        return f"{self.prefix}updates/{name}"

    @property
    def events(self) -> str:
        return f"{self.prefix}events/"

    @property
    def peer_secret(self) -> str:
        return f"{self.prefix}peer/secret"

    # single keys
    def unplaceable(self, name: str) -> str:
        return f"{self.unplaceable_prefix}{name}"

    def unit(self, name: str) -> str:
        return f"{self.units}{name}"

    def global_unit(self, name: str) -> str:
        return f"{self.globals}{name}"

    def machine(self, machine_id: str) -> str:
        return f"{self.machines}{machine_id}"

    def machine_metadata(self, machine_id: str) -> str:
        return f"{self.machine_metadata_prefix}{machine_id}"

    def machine_schedule(self, machine_id: str) -> str:
        return f"{self.schedule}{machine_id}/"

    def placement(self, machine_id: str, name: str) -> str:
        return f"{self.schedule}{machine_id}/{name}"

    def unit_states(self, name: str) -> str:
        return f"{self.states}{name}/"

    def state(self, name: str, machine_id: str) -> str:
        return f"{self.states}{name}/{machine_id}"

    # parsing keys back
    def tail(self, key: str, prefix: str) -> str:
        if not key.startswith(prefix):
            raise ValueError(f"key {key!r} is not under {prefix!r}")
        return key[len(prefix) :]

    def split_placement(self, key: str) -> tuple[str, str]:
        """``schedule/<machine>/<name>`` -> ``(machine, name)``."""
        machine_id, _, name = self.tail(key, self.schedule).partition("/")
        return machine_id, name

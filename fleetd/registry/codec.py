"""How fleet's records are stored: JSON values, and the decoding that checks them.

Every value the registry reads back from etcd passes through here; a value that is not
what the registry wrote (hand-edited, written by another version, truncated) raises
:class:`RecordError` naming the record, so one bad record can be reported and skipped
instead of stopping whoever reads it.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fleetd.model.history import HistoryEvent, decode_event, encode_event
from fleetd.model.limits import MAX_PEER_CERT_BYTES
from fleetd.model.revisions import UnitRevision, decode_revision, encode_revision
from fleetd.model.state import MachineState, StoredUnit, UnitState
from fleetd.model.unit import DesiredState
from fleetd.model.unitfile import UnitFile
from fleetd.model.update import UpdateRecord, decode_update, encode_update

T = TypeVar("T")


class RecordError(ValueError):
    """A stored value that cannot be read as the record its key says it holds."""


def dumps(data: Mapping[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no spaces): equal records give equal bytes, which is
    what lets the engine compare a placement with its unit without decoding either."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{what}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RecordError(f"{what}: expected a JSON object, found {type(data).__name__}")
    return data


def encode_unit(unit: StoredUnit) -> bytes:
    record: dict[str, Any] = {"name": unit.name, "options": unit.file.to_options(), "desiredState": str(unit.desired)}
    if unit.revision:  # beyond fleet's record (its readers ignore it)
        record["revision"] = unit.revision
    return dumps(record)


def decode_stored_unit(raw: bytes, what: str = "unit record") -> StoredUnit:
    data = _object(raw, what)
    revision = data.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise RecordError(f"{what}: revision must be a whole number")
    try:
        file = UnitFile.from_options(data["options"])
        return StoredUnit(data["name"], file, DesiredState(data["desiredState"]), revision)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordError(f"{what}: {type(exc).__name__}: {exc}") from exc


def encode_update_record(record: UpdateRecord) -> bytes:
    return dumps(encode_update(record))


def _checked(raw: bytes, what: str, decode: Callable[[dict[str, Any]], T]) -> T:
    """``decode`` of the JSON object in ``raw``; whatever it refuses becomes a RecordError
    naming the record."""
    try:
        return decode(_object(raw, what))
    except RecordError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RecordError(f"{what}: {exc}") from None


def decode_update_record(raw: bytes, what: str) -> UpdateRecord:
    return _checked(raw, what, decode_update)


def encode_unit_revision(revision: UnitRevision) -> bytes:
    return dumps(encode_revision(revision))


def decode_unit_revision(raw: bytes, what: str) -> UnitRevision:
    return _checked(raw, what, decode_revision)


def encode_machine(machine: MachineState) -> bytes:
    record = {
        "id": machine.id,
        "publicIP": machine.public_ip,
        "metadata": dict(machine.metadata),
        "version": machine.version,
    }
    if machine.peer_cert:  # beyond fleet's record; fleet's readers ignore it
        record["peerCert"] = machine.peer_cert
    return dumps(record)


def decode_machine(raw: bytes, what: str = "machine record") -> MachineState:
    data = _object(raw, what)
    machine_id, public_ip, version = data.get("id"), data.get("publicIP", ""), data.get("version", "")
    metadata = data.get("metadata") or {}
    if not isinstance(machine_id, str) or not machine_id:
        raise RecordError(f"{what}: no machine id")
    if not isinstance(public_ip, str) or not isinstance(version, str):
        raise RecordError(f"{what}: publicIP and version must be strings")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise RecordError(f"{what}: metadata must map names to strings")
    peer_cert = data.get("peerCert", "")
    if not isinstance(peer_cert, str) or len(peer_cert) > MAX_PEER_CERT_BYTES:
        raise RecordError(f"{what}: peerCert must be a PEM certificate of at most {MAX_PEER_CERT_BYTES} bytes")
    return MachineState(machine_id, public_ip, dict(metadata), version, peer_cert)


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    return dumps(dict(metadata))


def decode_metadata(raw: bytes | None, what: str = "machine metadata") -> dict[str, str]:
    if not raw:
        return {}
    return {str(k): str(v) for k, v in _object(raw, what).items()}


def encode_state(state: UnitState) -> bytes:
    record = {
        "name": state.name,
        "machineID": state.machine_id,
        "hash": state.hash,
        "load": state.load_state,
        "active": state.active_state,
        "sub": state.sub_state,
    }
    if state.error:
        record["error"] = state.error
    return dumps(record)


def decode_state(raw: bytes, what: str = "unit state record") -> UnitState:
    data = _object(raw, what)
    try:
        fields = [data["name"], data["machineID"], data["hash"], data["load"], data["active"], data["sub"]]
    except KeyError as exc:
        raise RecordError(f"{what}: missing {exc}") from exc
    error = data.get("error", "")
    if not all(isinstance(v, str) for v in fields) or not isinstance(error, str):
        raise RecordError(f"{what}: every field must be a string")
    return UnitState(*fields, error=error)


PEER_SECRET_BYTES = 32


def encode_peer_secret(secret: bytes) -> bytes:
    """Base64 text, so the key can be read (and rotated) with etcdctl."""
    return base64.b64encode(secret)


def decode_peer_secret(raw: bytes, what: str = "peer secret") -> bytes:
    """The key, or RecordError: a short or malformed value is never used to sign, since a
    guessable key would let anyone on the network read every machine's journal."""
    try:
        secret = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError) as exc:
        raise RecordError(f"{what}: not base64 ({exc})") from None
    if len(secret) < PEER_SECRET_BYTES:
        raise RecordError(f"{what}: {len(secret)} bytes, at least {PEER_SECRET_BYTES} are needed")
    return secret


def encode_history_event(event: HistoryEvent) -> bytes:
    return dumps(encode_event(event))


def decode_history_event(raw: bytes, event_id: str) -> HistoryEvent:
    return _checked(raw, f"event {event_id}", lambda data: decode_event(data, event_id))


class EventIds:
    """Ids for stored events: the time in microseconds first (so ids sort by time across
    writers), then this writer's random tag and counter (so two events of one microsecond
    never collide, and one writer's events keep their order)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)
        self.count = 0

    def next(self, when: float) -> str:
        self.count += 1
        return f"{max(0, int(when * 1_000_000)):016d}-{self.tag}-{self.count:08x}"


def event_id_before(when: float) -> str:
    """The smallest id of an event at ``when`` or later: ids below it are older."""
    return f"{max(0, int(when * 1_000_000)):016d}"

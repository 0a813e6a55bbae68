"""What the list commands print, pinned exactly (fleetctl.output is pure)."""

from __future__ import annotations

import json

import pytest

from fleetctl.output import (
    DEFAULT_MACHINE_FIELDS,
    DEFAULT_UNIT_FIELDS,
    DEFAULT_UNIT_FILE_FIELDS,
    MACHINE_FIELDS,
    UNIT_FIELDS,
    UNIT_FILE_ALIASES,
    UNIT_FILE_FIELDS,
    FieldError,
    dump_json,
    format_metadata,
    hash_legend,
    list_machines_table,
    list_unit_files_table,
    list_units_table,
    machine_legend,
    machines_json,
    parse_fields,
    unit_files_json,
    units_json,
)
from fleetd.model.unitfile import parse_unit_file

M1 = "113f16a7" + "a" * 24
M2 = "fd1d3e94" + "b" * 24
M3 = "0c6e6eb2" + "c" * 24  # placed on, but not (or no longer) in the machine list
MACHINES = {
    M1: {"id": M1, "primaryIP": "172.17.8.103", "metadata": {"region": "us-west", "az": "us-west-1b"}},
    M2: {"id": M2, "primaryIP": "172.17.8.101", "metadata": {}},
}
H1 = "e55c0aeb" + "0" * 32
H2 = "0123456789abcdef0123456789abcdef01234567"


def options(text: str) -> list[dict[str, str]]:
    return parse_unit_file(text).to_options()


HELLO = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sleep infinity\n"
PING = "[Service]\nExecStart=/bin/ping 8.8.8.8\n"
GLOBAL = "[Unit]\nDescription=on every host\n\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nGlobal=true\n"
UNITS = [
    {
        "name": "ping.service",
        "options": options(PING),
        "desiredState": "inactive",
        "currentState": "inactive",
        "machineID": "",
    },
    {
        "name": "hello.service",
        "options": options(HELLO),
        "desiredState": "launched",
        "currentState": "launched",
        "machineID": M1,
    },
    {
        "name": "global.service",
        "options": options(GLOBAL),
        "desiredState": "launched",
        "currentState": "launched",
        "machineID": "",
    },
    {
        "name": "lost.service",
        "options": options(PING),
        "desiredState": "loaded",
        "currentState": "loaded",
        "machineID": M3,
    },
]
HELLO_HASH = parse_unit_file(HELLO).hash()
PING_HASH = parse_unit_file(PING).hash()
GLOBAL_HASH = parse_unit_file(GLOBAL).hash()


def st(name: str, machine: str, load: str, active: str, sub: str, hash_: str) -> dict[str, str]:
    return {
        "name": name,
        "machineID": machine,
        "hash": hash_,
        "systemdLoadState": load,
        "systemdActiveState": active,
        "systemdSubState": sub,
    }


STATES = [
    st("hello.service", M1, "loaded", "active", "running", H1),
    st("global.service", M2, "loaded", "active", "running", H2),
    st("global.service", M1, "loaded", "failed", "failed", H2),
    st("old.service", M3, "not-found", "", "", ""),
]


# -- cells ------------------------------------------------------------------------------------


def test_machine_legends() -> None:
    assert machine_legend(M1, MACHINES, False) == "113f16a7.../172.17.8.103"
    assert machine_legend(M1, MACHINES, True) == f"{M1}/172.17.8.103"
    assert machine_legend(M3, MACHINES, False) == "0c6e6eb2..."
    assert machine_legend("", MACHINES, False) == "-"


def test_metadata_and_hash() -> None:
    assert format_metadata({"z": "1", "a": "2", "m": "x=y"}) == "a=2,m=x=y,z=1"
    assert format_metadata({}) == "-" and format_metadata(None) == "-"
    assert hash_legend(H1, False) == "e55c0ae" and hash_legend(H1, True) == H1 and hash_legend("", False) == "-"


def test_fields_parsing() -> None:
    assert parse_fields(DEFAULT_UNIT_FIELDS, UNIT_FIELDS) == ["unit", "machine", "active", "sub"]
    assert parse_fields("Unit, HASH", UNIT_FIELDS) == ["unit", "hash"]
    assert parse_fields("unit,unit", UNIT_FIELDS) == ["unit", "unit"]
    with pytest.raises(
        FieldError, match=r'invalid field "bogus" in --fields \(valid fields: unit,load,active,sub,machine,hash\)'
    ):
        parse_fields("unit,bogus", UNIT_FIELDS)
    with pytest.raises(FieldError, match="valid fields: machine,ip,metadata"):
        parse_fields("", MACHINE_FIELDS)
    with pytest.raises(FieldError, match='invalid field ""'):
        parse_fields("unit,", UNIT_FILE_FIELDS)
    assert list(UNIT_FILE_FIELDS) == ["unit", "hash", "dstate", "state", "target", "global", "desc"]


# -- list-machines ------------------------------------------------------------------------------


def test_list_machines() -> None:
    machines = list(MACHINES.values())
    fields = parse_fields(DEFAULT_MACHINE_FIELDS, MACHINE_FIELDS)
    assert list_machines_table(machines, fields, False, False) == (
        "MACHINE\t\tIP\t\tMETADATA\n"
        "113f16a7...\t172.17.8.103\taz=us-west-1b,region=us-west\n"
        "fd1d3e94...\t172.17.8.101\t-\n"
    )
    assert list_machines_table(machines, fields, True, True) == (
        f"{M1}\t172.17.8.103\taz=us-west-1b,region=us-west\n{M2}\t172.17.8.101\t-\n"
    )
    assert list_machines_table(machines, ["ip", "machine"], False, False) == (
        "IP\t\tMACHINE\n172.17.8.103\t113f16a7...\n172.17.8.101\tfd1d3e94...\n"
    )
    assert list_machines_table([], fields, False, False) == "MACHINE\tIP\tMETADATA\n"
    assert list_machines_table([], fields, False, True) == ""


# -- list-units -------------------------------------------------------------------------------


def test_list_units_default() -> None:
    fields = parse_fields(DEFAULT_UNIT_FIELDS, UNIT_FIELDS)
    assert list_units_table(STATES, MACHINES, fields, False, False) == (
        "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\n"
        "global.service\t113f16a7.../172.17.8.103\tfailed\tfailed\n"
        "global.service\tfd1d3e94.../172.17.8.101\tactive\trunning\n"
        "hello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
        "old.service\t0c6e6eb2...\t\t\t-\t-\n"
    )


def test_list_units_full_no_legend_and_fields() -> None:
    assert list_units_table(STATES, MACHINES, ["unit", "hash", "machine"], True, True) == (
        f"global.service\t{H2}\t{M1}/172.17.8.103\n"
        f"global.service\t{H2}\t{M2}/172.17.8.101\n"
        f"hello.service\t{H1}\t{M1}/172.17.8.103\n"
        f"old.service\t-\t\t\t\t\t\t{M3}\n"  # 40-char column: 48 wide
    )
    assert list_units_table(STATES, MACHINES, ["unit", "load", "active", "sub", "hash"], False, False) == (
        "UNIT\t\tLOAD\t\tACTIVE\tSUB\tHASH\n"
        "global.service\tloaded\t\tfailed\tfailed\t0123456\n"
        "global.service\tloaded\t\tactive\trunning\t0123456\n"
        "hello.service\tloaded\t\tactive\trunning\te55c0ae\n"
        "old.service\tnot-found\t-\t-\t-\n"
    )
    assert list_units_table([], MACHINES, ["unit"], False, False) == "UNIT\n"


def test_list_units_json() -> None:
    data = json.loads(dump_json(units_json(STATES, list(UNIT_FIELDS))))
    assert data[0] == {
        "unit": "global.service",
        "load": "loaded",
        "active": "failed",
        "sub": "failed",
        "machine": M1,
        "hash": H2,
    }
    assert data[-1] == {
        "unit": "old.service",
        "load": "not-found",
        "active": None,
        "sub": None,
        "machine": M3,
        "hash": None,
    }
    assert units_json(STATES, ["unit"]) == [
        {"unit": "global.service"},
        {"unit": "global.service"},
        {"unit": "hello.service"},
        {"unit": "old.service"},
    ]


# -- list-unit-files --------------------------------------------------------------------------


def test_list_unit_files_default() -> None:
    fields = parse_fields(DEFAULT_UNIT_FILE_FIELDS, UNIT_FILE_FIELDS)
    assert list_unit_files_table(UNITS, MACHINES, fields, False, False) == (
        "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n"
        f"global.service\t{GLOBAL_HASH[:7]}\tlaunched\t-\t\tglobal\n"
        f"hello.service\t{HELLO_HASH[:7]}\tlaunched\tlaunched\t113f16a7.../172.17.8.103\n"
        f"lost.service\t{PING_HASH[:7]}\tloaded\t\tloaded\t\t0c6e6eb2...\n"
        f"ping.service\t{PING_HASH[:7]}\tinactive\tinactive\t-\n"
    )


def test_list_unit_files_full_no_legend_and_fields() -> None:
    assert list_unit_files_table(UNITS, MACHINES, ["unit", "hash", "target"], True, True) == (
        f"global.service\t{GLOBAL_HASH}\tglobal\n"
        f"hello.service\t{HELLO_HASH}\t{M1}/172.17.8.103\n"
        f"lost.service\t{PING_HASH}\t{M3}\n"
        f"ping.service\t{PING_HASH}\t-\n"
    )
    assert list_unit_files_table(UNITS, MACHINES, ["unit", "global", "desc", "dstate"], False, False) == (
        "UNIT\t\tGLOBAL\tDESC\t\tDSTATE\n"
        "global.service\ttrue\ton every host\tlaunched\n"
        "hello.service\tfalse\tHello World\tlaunched\n"
        "lost.service\tfalse\t-\t\tloaded\n"
        "ping.service\tfalse\t-\t\tinactive\n"
    )


def test_list_unit_files_json() -> None:
    data = unit_files_json(UNITS, list(UNIT_FILE_FIELDS))
    assert [d["unit"] for d in data] == ["global.service", "hello.service", "lost.service", "ping.service"]
    assert data[0] == {
        "unit": "global.service",
        "hash": GLOBAL_HASH,
        "dstate": "launched",
        "state": None,
        "target": "global",
        "global": True,
        "desc": "on every host",
    }
    assert data[3]["target"] is None and data[3]["desc"] is None


def test_machines_json() -> None:
    assert machines_json(MACHINES.values(), ["machine", "metadata"]) == [
        {"machine": M1, "metadata": {"az": "us-west-1b", "region": "us-west"}},
        {"machine": M2, "metadata": {}},
    ]


def test_list_unit_files_deprecated_tmachine_is_target() -> None:
    # fleet accepted "tmachine" (the old name of "target"), with the header as given
    fields = parse_fields("unit,dstate,state,tmachine", UNIT_FILE_FIELDS, UNIT_FILE_ALIASES)
    assert fields == ["unit", "dstate", "state", "tmachine"]
    assert list_unit_files_table(UNITS, MACHINES, ["unit", "tmachine"], False, False) == (
        "UNIT\t\tTMACHINE\n"
        "global.service\tglobal\n"
        "hello.service\t113f16a7.../172.17.8.103\n"
        "lost.service\t0c6e6eb2...\n"
        "ping.service\t-\n"
    )
    assert [d["tmachine"] for d in unit_files_json(UNITS, ["tmachine"])] == ["global", M1, M3, None]
    with pytest.raises(FieldError, match=r"valid fields: unit,hash,dstate,state,target,global,desc\)"):
        parse_fields("tmachine", UNIT_FILE_FIELDS)  # only where the command accepts it

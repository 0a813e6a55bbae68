"""The OpenAPI 3.1 description of the whole API, served at ``GET /fleet/v1/openapi.json``.

fleet described its API with a Google discovery document (still served, see
:mod:`fleetd.api.discovery`); OpenAPI is what today's clients, generators and API fuzzers
read. This one is written to be checked, not only read: every route, method, parameter and
request body, and every status a route can answer with its body (errors always in fleet's
shape ``{"error": {"code", "message"}}``). ``tests/integration/test_api_schema.py`` runs
schemathesis over it against a live fleetd and fails on any answer the document does not
describe, so the document cannot drift from the code.

The numbers in it (sizes, page and follow limits, journal defaults) come from the modules
that enforce them, never from a copy. Which statuses each route answers, and why:

- every route: 401 without the bearer token a TCP listener requires; 503 while this
  fleetd must not serve (its machine id is held by another fleetd) or etcd is unreachable;
- any body or query value that is malformed: 400; a body over MAX_REQUEST_BYTES: 413;
- a method a path does not have: 405 with ``Allow``; a path that does not exist: 404.
"""

from __future__ import annotations

from typing import Any

from fleetd.api.extensions import FOLLOW_RETRY_AFTER
from fleetd.api.machines import MACHINE_ID_PATTERN, METADATA_KEY_PATTERN
from fleetd.api.state import INDEX_HEADER, MAX_INDEX, WAIT_RETRY_AFTER
from fleetd.model.batch import ABSENT, ACTION_WORDS, DESTROYED
from fleetd.model.history import EventKind
from fleetd.model.journal import DEFAULT_JOURNAL_LINES, DEFAULT_JOURNAL_OUTPUT, JOURNAL_OUTPUTS, MAX_JOURNAL_LINES
from fleetd.model.limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_UNITS,
    MAX_JOURNAL_FOLLOWS,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_LENGTH,
    MAX_PATCH_MACHINES,
    MAX_PATCH_OPERATIONS,
    MAX_REQUEST_BYTES,
    MAX_STATE_WAIT_SECONDS,
    MAX_STATE_WAITERS,
    MAX_UNIT_BYTES,
    OPTION_OVERHEAD_BYTES,
)
from fleetd.model.names import MAX_NAME_LENGTH, UNIT_SUFFIXES
from fleetd.model.unit import DesiredState
from fleetd.model.update import (
    DEFAULT_HEALTHY_DEADLINE,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_MIN_HEALTHY,
    MAX_HEALTHY_DEADLINE,
    MAX_MIN_HEALTHY,
    MAX_PARALLEL_LIMIT,
    Phase,
    UpdateState,
)

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
TEXT = "text/plain"

_STATES = [str(state) for state in DesiredState]
# A unit name as fleetd.model.names accepts it, as far as a pattern can say: the "@" rules
# for templates are checked by the server (400), so the pattern is never stricter than it.
UNIT_NAME_PATTERN = (
    r"^([A-Za-z0-9:_]|\\x[0-9a-fA-F]{2})([A-Za-z0-9:_.@-]|\\x[0-9a-fA-F]{2})*\.("
    + "|".join(sorted(UNIT_SUFFIXES))
    + ")$"
)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _string(description: str = "", **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _page(field: str, item: str, token: str = "") -> dict[str, Any]:
    """One page of a fleet list: ``field`` holds ``item`` objects, ``nextPageToken`` the
    place to go on from (``token`` says when it is present)."""
    return {
        "type": "object",
        "required": [field],
        "additionalProperties": False,
        "properties": {
            field: {"type": "array", "items": _schema(item)},
            "nextPageToken": _string(token, minLength=1),
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "description": "Every error fleetd answers, whatever the route (fleet's shape).",
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status again"},
                    "message": _string("what went wrong, for a person", minLength=1),
                },
            }
        },
    },
    "UnitOption": {
        "description": "One Name=Value line of a [Section] of the unit file.",
        "type": "object",
        "required": ["section", "name", "value"],
        "properties": {"section": _string(), "name": _string(), "value": _string()},
    },
    "Unit": {
        "type": "object",
        "required": ["name", "options", "desiredState", "currentState", "machineID"],
        "additionalProperties": False,
        "properties": {
            "name": _string(),
            "options": {"type": "array", "items": _schema("UnitOption")},
            "desiredState": _string(enum=_STATES),
            "currentState": _string(
                "launched when systemd has it active (or activating, reloading) on a machine it is placed "
                "on, loaded when placed and reported otherwise, else inactive",
                enum=_STATES,
            ),
            "machineID": _string("the machine it is placed on; empty when unplaced or global"),
            "revision": {
                "type": "integer",
                "minimum": 1,
                "description": "beyond fleet: the number of its current body (see /units/{unitName}/revisions)",
            },
        },
    },
    "UnitRevision": {
        "type": "object",
        "required": ["revision", "hash", "time", "origin"],
        "additionalProperties": False,
        "properties": {
            "name": _string(),
            "revision": {"type": "integer", "minimum": 1},
            "hash": _string("SHA-1 of the unit file"),
            "time": _string("when it was written, RFC 3339 in UTC"),
            "origin": _string("who wrote it, e.g. API (fleetctl), fleetctl --driver etcd"),
            "options": {"type": "array", "items": _schema("UnitOption")},
        },
    },
    "UnitRequest": {
        "description": (
            "The body of PUT /units/{unitName}. Other fields (currentState, machineID) are ignored. "
            f"The unit may be at most {MAX_UNIT_BYTES} bytes, counted as each option's section, name "
            f"and value in UTF-8 plus {OPTION_OVERHEAD_BYTES} bytes per option (413 beyond)."
        ),
        "type": "object",
        "properties": {
            "name": {
                "type": ["string", "null"],
                "description": "when given and not empty, must equal the name in the URL",
            },
            "desiredState": {
                "type": ["string", "null"],
                "enum": [*_STATES, "", None],
                "description": (
                    "absent, null or empty (as fleet's client submits): a new unit is created inactive, "
                    "new options replacing a unit make it inactive, and without new options it is a 409"
                ),
            },
            "options": {
                "type": ["array", "null"],
                "description": (
                    "the unit file; absent, null or [] means no new contents (change the desired state "
                    "only, or create an instance from its template)"
                ),
                "items": _schema("UnitOption"),
            },
        },
    },
    "BatchRequest": {
        "description": (
            "The body of POST /units:batch: units to create, replace or re-target (each as the body of "
            "PUT /units/{unitName}, with its name) and units to destroy. Every entry is checked, and every unit "
            "decided against the cluster, before anything is written; one problem refuses the whole batch "
            f"(nothing written). At most {MAX_BATCH_UNITS} entries in units and destroy together and "
            f"{MAX_BATCH_BYTES} bytes (413 beyond); each unit at most {MAX_UNIT_BYTES} bytes; a name at most "
            "once. Other fields are ignored."
        ),
        "type": "object",
        "properties": {
            "units": {"type": ["array", "null"], "maxItems": MAX_BATCH_UNITS, "items": _schema("BatchUnit")},
            "destroy": {
                "type": ["array", "null"],
                "maxItems": MAX_BATCH_UNITS,
                "items": _string(pattern=UNIT_NAME_PATTERN, minLength=1, maxLength=MAX_NAME_LENGTH),
            },
            "replace": {
                "type": ["boolean", "null"],
                "description": "a unit sent with options that differ from the stored ones replaces them (else 409)",
            },
        },
    },
    "BatchUnit": {
        "description": "One unit of a batch: the body of PUT /units/{unitName} with its name.",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": _string(pattern=UNIT_NAME_PATTERN, minLength=1, maxLength=MAX_NAME_LENGTH),
            "desiredState": {"type": ["string", "null"], "enum": [*_STATES, "", None]},
            "options": {"type": ["array", "null"], "items": _schema("UnitOption")},
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["units"],
        "additionalProperties": False,
        "properties": {
            "units": {
                "type": "array",
                "description": "what was done to each unit, units first then destroys, in the order sent",
                "items": {
                    "type": "object",
                    "required": ["name", "result"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _string(),
                        "result": _string(enum=[*ACTION_WORDS.values(), DESTROYED, ABSENT]),
                    },
                },
            }
        },
    },
    "BatchError": {
        "description": "fleet's error shape; a refused batch adds every problem per unit.",
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer"},
                    "message": _string(minLength=1),
                    "units": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "code", "message"],
                            "additionalProperties": False,
                            "properties": {"name": _string(), "code": {"type": "integer"}, "message": _string()},
                        },
                    },
                    "written": {
                        "type": "array",
                        "description": "units written before the refusal (only when another writer interfered)",
                        "items": _string(),
                    },
                },
            }
        },
    },
    "UnitPage": _page("units", "Unit", "present when there are more; pass it back for the next page"),
    "HistoryEvent": {
        "type": "object",
        "required": ["time", "unit", "machine", "event", "reason", "revision"],
        "additionalProperties": False,
        "properties": {
            "time": _string("when it was decided, RFC 3339 in UTC with milliseconds"),
            "unit": _string("the unit it concerns (empty for a machine's event)"),
            "machine": _string("the machine it concerns (may be empty)"),
            "event": {"type": "string", "enum": [str(kind) for kind in EventKind]},
            "reason": _string("why, in words"),
            "revision": {"type": ["integer", "null"], "minimum": 0, "description": "the unit's revision, when known"},
        },
    },
    "EventPage": _page("events", "HistoryEvent", "present when there may be more; pass it back for the next page"),
    "UpdateRequest": {
        "description": (
            "The body of POST /updates/{unitName}: either the unit's new body (options: an update) "
            'or a kept revision to return to (revision: its number, or "previous": a rollback). The '
            "parameters are optional. The options follow the unit-file rules of docs/units.md (the patterns "
            "here are their gist)."
        ),
        "type": "object",
        "oneOf": [{"required": ["options"]}, {"required": ["revision"]}],
        "additionalProperties": False,
        "properties": {
            "options": {"type": "array", "minItems": 1, "maxItems": 64, "items": _schema("UpdateOption")},
            "revision": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 9_999_999_999}, {"const": "previous"}]},
            "maxParallel": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_PARALLEL_LIMIT,
                "description": f"instances replaced at once (default {DEFAULT_MAX_PARALLEL})",
            },
            "minHealthy": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_MIN_HEALTHY,
                "description": (
                    f"seconds an instance must stay active on the new body (default {DEFAULT_MIN_HEALTHY:g})"
                ),
            },
            "healthyDeadline": {
                "type": "number",
                "minimum": 0.1,
                "maximum": MAX_HEALTHY_DEADLINE,
                "description": (
                    "seconds from an instance's replace to its being healthy before the update stops "
                    f"(default {DEFAULT_HEALTHY_DEADLINE:g}); at least minHealthy"
                ),
            },
            "autoRevert": {"type": "boolean", "description": "revert the changed instances when it stops (default)"},
        },
    },
    "UpdateOption": {
        "description": "One Name=Value line of a [Section] of the new unit file.",
        "type": "object",
        "required": ["section", "name", "value"],
        "additionalProperties": False,
        "properties": {
            "section": _string(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,30}[A-Za-z0-9]$"),
            "name": _string(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,30}$"),
            "value": _string(pattern=r"^([!-\[\]-~]([ -~]{0,60}[!-\[\]-~])?)?$"),
        },
    },
    "Update": {
        "description": "A rolling update's record, as the engine leader keeps it.",
        "type": "object",
        "required": ["name", "kind", "state", "reason", "target", "targetHash", "instances", "params", "counts"],
        "properties": {
            "name": _string(),
            "kind": _string(enum=["update", "rollback"]),
            "template": {"type": "boolean"},
            "state": _string(
                "pending until the engine takes it up; running; reverting; then finished, reverted or failed",
                enum=[str(s) for s in UpdateState],
            ),
            "reason": _string("why it stopped (empty otherwise)"),
            "target": {"type": "array", "items": _schema("UnitOption")},
            "targetHash": _string(),
            "targetRevision": {"type": ["integer", "null"]},
            "params": {"type": "object"},
            "bodies": {"type": "object"},
            "instances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "phase", "since", "previousRevision", "previousHash"],
                    "properties": {
                        "name": _string(),
                        "phase": _string(enum=[str(p) for p in Phase]),
                        "since": {"type": "number"},
                        "previousRevision": {"type": "integer"},
                        "previousHash": _string(),
                    },
                },
            },
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "created": {"type": "number"},
            "changed": {"type": "number"},
            "createdAt": _string(),
            "changedAt": _string(),
            "origin": _string(),
        },
    },
    "UnitState": {
        "type": "object",
        "required": ["name", "hash", "machineID", "systemdLoadState", "systemdActiveState", "systemdSubState"],
        "additionalProperties": False,
        "properties": {
            "name": _string(),
            "hash": _string("SHA-1 of the unit file the machine runs"),
            "machineID": _string(),
            "systemdLoadState": _string(),
            "systemdActiveState": _string(),
            "systemdSubState": _string(),
        },
    },
    "UnitStatePage": _page("states", "UnitState"),
    "Machine": {
        "type": "object",
        "required": ["id", "primaryIP", "metadata"],
        "additionalProperties": False,
        "properties": {
            "id": _string(),
            "primaryIP": _string(),
            "metadata": {"type": "object", "additionalProperties": _string()},
        },
    },
    "MachinePage": _page("machines", "Machine"),
    "MetadataValue": {
        "description": 'A metadata value: a string, or {"value": string} as fleet\'s own client sends it.',
        "anyOf": [
            _string(pattern='^[^\\x00-\\x1f,"]+$'),
            {
                "type": "object",
                "required": ["value"],
                "additionalProperties": False,
                "properties": {"value": _string(pattern='^[^\\x00-\\x1f,"]+$')},
            },
        ],
    },
    "MetadataPatch": {
        "description": (
            "Operations on machines' dynamic metadata, applied all at once or not at all; a later "
            f"operation on the same key wins. At most {MAX_PATCH_OPERATIONS} operations on at most "
            f"{MAX_PATCH_MACHINES} machines (413 beyond)."
        ),
        "type": "array",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": _string(enum=["add", "replace", "remove"]),
                "path": _string(
                    "/<machineID>/metadata/<key>",
                    pattern="^/" + MACHINE_ID_PATTERN + "/metadata/" + METADATA_KEY_PATTERN + "$",
                ),
            },
            # add and replace need a value; remove ignores any
            "if": {"properties": {"op": {"enum": ["add", "replace"]}}},
            "then": {"required": ["value"], "properties": {"value": _schema("MetadataValue")}},
        },
    },
    "Unplaceable": {
        "type": "object",
        "required": ["units"],
        "additionalProperties": False,
        "properties": {
            "units": {
                "type": "object",
                "description": "unit name -> why the engine cannot place it",
                "additionalProperties": _string(),
            }
        },
    },
}

_ERROR_BODY = {JSON: {"schema": _schema("Error")}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _ERROR_BODY}
    if headers:
        response["headers"] = headers
    return response


RESPONSES: dict[str, Any] = {
    "BadRequest": _error("a malformed parameter or body; the message names it"),
    "Unauthorized": _error(
        "on a TCP listener that requires a token: no or a wrong Authorization: Bearer <token>",
        {"WWW-Authenticate": {"schema": _string()}},
    ),
    "NotFound": _error("the unit or machine does not exist"),
    "Conflict": _error("the request conflicts with the current state (another writer got there first)"),
    "PayloadTooLarge": _error(
        f"the body is larger than {MAX_REQUEST_BYTES} bytes, or it asks for more than a limit allows; "
        "the message names the limit"
    ),
    "UnsupportedMediaType": _error(
        "the request does not have exactly one Content-Type header with the media type application/json"
    ),
    "Unavailable": _error("this fleetd must not serve now (the message says why), or etcd cannot be reached"),
    "NotImplemented": _error("this fleetd cannot read journals or unit status"),
}

_COMMON_ERRORS = {"401": _ref("responses", "Unauthorized"), "503": _ref("responses", "Unavailable")}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    names = {
        "400": "BadRequest",
        "404": "NotFound",
        "409": "Conflict",
        "413": "PayloadTooLarge",
        "415": "UnsupportedMediaType",
        "501": "NotImplemented",
    }
    result = dict(ok)
    for status in errors:
        result[status] = _ref("responses", names[status])
    result.update(_COMMON_ERRORS)
    return result


def _json(description: str, schema: dict[str, Any], links: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if links:
        response["links"] = links
    return response


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: which operation a response's values feed (clients and stateful
    testers follow them, e.g. from a created unit to reading and destroying it)."""
    return {"operationId": operation_id, "parameters": parameters}


_UNIT_LINKS = {
    "GetUnit": _link("Units.Get", unitName="$request.path.unitName"),
    "DestroyUnit": _link("Units.Delete", unitName="$request.path.unitName"),
    "UnitStates": _link("UnitState.List", unitName="$request.path.unitName"),
    "UnitRevisions": _link("Units.Revisions", unitName="$request.path.unitName"),
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "allowEmptyValue": True,  # empty is the same as absent
        "schema": schema,
        "description": description,
    }


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


_BOOL_WORDS = "true or false (also yes/no, 1/0, on/off, t/f, in any case; empty is false)"

PARAMETERS: dict[str, Any] = {
    "unitName": _path(
        "unitName",
        _string(pattern=UNIT_NAME_PATTERN, minLength=1, maxLength=MAX_NAME_LENGTH),
        "a unit name with its type suffix, e.g. web@1.service",
    ),
    "machineID": _path(
        "machineID",
        _string(pattern=f"^{MACHINE_ID_PATTERN}$", maxLength=128),
        "a machine's id (its /etc/machine-id); another id is a 404",
    ),
    "nextPageToken": _query(
        "nextPageToken",
        _string(pattern="^[A-Za-z0-9_=-]*$", maxLength=MAX_PAGE_TOKEN_LENGTH),
        "the nextPageToken of the previous page, exactly as received",
    ),
    "pageSize": _query(
        "pageSize",
        {"type": "integer", "minimum": 1},
        f"items per page (beyond fleet): default the server's token_limit (100), at most {MAX_PAGE_SIZE} "
        "(a larger value is lowered to it)",
    ),
}


def _param(name: str) -> dict[str, str]:
    return _ref("parameters", name)


_PAGING = [_param("nextPageToken"), _param("pageSize")]

PATHS: dict[str, Any] = {
    "/fleet/v1/units": {
        "get": {
            "operationId": "Units.List",
            "summary": "all units, sorted by name, a page at a time",
            "parameters": _PAGING,
            "responses": _responses(
                {
                    "200": _json(
                        "a page of units",
                        _schema("UnitPage"),
                        {"GetFirstUnit": _link("Units.Get", unitName="$response.body#/units/0/name")},
                    )
                },
                "400",
            ),
        }
    },
    "/fleet/v1/units:batch": {
        "post": {
            "operationId": "Units.Batch",
            "summary": "create, replace, re-target and destroy many units in one request (beyond fleet)",
            "description": (
                "Validates every entry and decides every unit against the cluster before writing anything; "
                "any problem refuses the batch with every problem per unit (error.units) and nothing "
                "changed. Then writes in as few etcd transactions as etcd allows (128 operations each): each "
                "transaction is all or nothing and each unit's write in it is conditional on the unit being "
                "as read, a unit another writer changed meanwhile is decided again; a failure between "
                "transactions leaves the earlier written (repeating the batch finishes it). Sent with "
                "Content-Type: application/json (415 otherwise). A server without this route answers 404: "
                "clients then send one PUT or DELETE per unit."
            ),
            "requestBody": {"required": True, "content": {JSON: {"schema": _schema("BatchRequest")}}},
            "responses": {
                **_responses({"200": _json("every unit done", _schema("BatchResult"))}, "413", "415"),
                "400": {
                    "description": "a malformed body, or a refused batch (every problem per unit); nothing written",
                    "content": {JSON: {"schema": _schema("BatchError")}},
                },
                "409": {
                    "description": (
                        "a unit exists with other options and replace was not asked, or an instance has no "
                        "options and no template; nothing written (but error.written)"
                    ),
                    "content": {JSON: {"schema": _schema("BatchError")}},
                },
                "503": {
                    "description": (
                        "this fleetd must not serve or etcd cannot be reached, or units kept changing under "
                        "the batch (error.units names them)"
                    ),
                    "content": {JSON: {"schema": _schema("BatchError")}},
                },
            },
        }
    },
    "/fleet/v1/units/{unitName}": {
        "parameters": [_param("unitName")],
        "get": {
            "operationId": "Units.Get",
            "summary": "one unit",
            "responses": _responses({"200": _json("the unit", _schema("Unit"))}, "400", "404"),
        },
        "put": {
            "operationId": "Units.Set",
            "summary": "create a unit, replace its contents, or change its desired state",
            "description": (
                "As fleet's API: creates the unit (201) when it does not exist, from its options, or "
                "an instance sent without options from its template (409 when neither exists); "
                "different options replace the unit's file (201; 204 with replace=true); otherwise "
                "changes its desired "
                "state (204; 409 without desiredState). A template can only be inactive. As in "
                "fleet, the body must be sent with Content-Type: application/json (415 otherwise)."
            ),
            "parameters": [
                _query(
                    "replace",
                    {"type": "boolean"},
                    f"fleetd's extension: a plain PUT replaces too (201); with replace=true, 204: {_BOOL_WORDS}",
                ),
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": _schema("UnitRequest")}}},
            "responses": _responses(
                {
                    "201": {"description": "created, or its file replaced", "links": _UNIT_LINKS},
                    "204": {"description": "changed, or already as asked", "links": _UNIT_LINKS},
                },
                "400",
                "404",
                "409",
                "413",
                "415",
            ),
        },
        "delete": {
            "operationId": "Units.Delete",
            "summary": "destroy a unit",
            "responses": _responses({"204": {"description": "destroyed"}}, "400", "404"),
        },
    },
    "/fleet/v1/state": {
        "get": {
            "operationId": "UnitState.List",
            "summary": "the systemd state machines report for their units, sorted by unit then machine",
            "parameters": [
                _query(
                    "unitName",
                    _string(pattern=UNIT_NAME_PATTERN, maxLength=MAX_NAME_LENGTH),
                    "only this unit's states",
                ),
                _query(
                    "machineID",
                    _string(pattern=f"^{MACHINE_ID_PATTERN}$", maxLength=128),
                    "only this machine's states",
                ),
                _query(
                    "wait",
                    {"type": "boolean"},
                    "beyond fleet: a long-poll, answered once a unit state or a placement changed after "
                    f"revision index (or after timeout): {_BOOL_WORDS}",
                ),
                _query(
                    "index",
                    {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
                    f"with wait (required then): the {INDEX_HEADER} of a previous answer",
                ),
                _query(
                    "timeout",
                    {"type": "integer", "minimum": 1, "maximum": MAX_STATE_WAIT_SECONDS},
                    f"with wait: seconds to wait at most (default {MAX_STATE_WAIT_SECONDS})",
                ),
                *_PAGING,
            ],
            "responses": _responses(
                {
                    "200": {
                        **_json("a page of states", _schema("UnitStatePage")),
                        "headers": {
                            INDEX_HEADER: {
                                "description": "the etcd revision this answer reflects: the next wait's index",
                                "schema": _string(pattern="^[0-9]+$"),
                            }
                        },
                    },
                    "429": _error(
                        f"this fleetd already holds {MAX_STATE_WAITERS} waits",
                        {
                            "Retry-After": {
                                "schema": _string(pattern="^[0-9]+$"),
                                "description": f"seconds to wait ({WAIT_RETRY_AFTER})",
                            }
                        },
                    ),
                },
                "400",
            ),
        }
    },
    "/fleet/v1/state/{unitName}": {
        "parameters": [_param("unitName")],
        "get": {
            "operationId": "UnitState.Get",
            "summary": "one state of a unit (fleet's UnitState.Get): the first by machine id",
            "responses": _responses({"200": _json("the state", _schema("UnitState"))}, "400", "404"),
        },
    },
    "/fleet/v1/machines": {
        "get": {
            "operationId": "Machines.List",
            "summary": "the live machines, sorted by id",
            "parameters": _PAGING,
            "responses": _responses(
                {
                    "200": _json(
                        "a page of machines",
                        _schema("MachinePage"),
                        {
                            "Journal": _link("Machines.Journal", machineID="$response.body#/machines/0/id"),
                            "Status": _link("Machines.Status", machineID="$response.body#/machines/0/id"),
                        },
                    )
                },
                "400",
            ),
        },
        "patch": {
            "operationId": "Machines.Patch",
            "summary": "change machines' dynamic metadata, all at once or not at all",
            "description": (
                "Every named machine must be registered: an unknown machine is a 404 naming it, and then "
                "nothing is changed on any machine. The metadata is kept across restarts of the machine's "
                "fleetd. The body is read as JSON whatever its Content-Type."
            ),
            "requestBody": {"required": True, "content": {JSON: {"schema": _schema("MetadataPatch")}}},
            "responses": _responses({"204": {"description": "changed"}}, "400", "404", "409", "413"),
        },
    },
    "/fleet/v1/machines/{machineID}/journal/{unitName}": {
        "parameters": [_param("machineID"), _param("unitName")],
        "get": {
            "operationId": "Machines.Journal",
            "summary": "the unit's journal on that machine (beyond fleet), streamed as text",
            "description": (
                "Only the machine's own fleetd answers; another answers 404 saying where to ask "
                "(X-Fleet-Machine-IP). With follow, the stream goes on until the client leaves; a fleetd "
                f"streams at most {MAX_JOURNAL_FOLLOWS} follows at once (429 beyond). A failure after the "
                "stream started is reported as its last line."
            ),
            "parameters": [
                _query(
                    "lines",
                    {"type": "integer", "minimum": 0, "maximum": MAX_JOURNAL_LINES},
                    f"how many of the last lines to send first (default {DEFAULT_JOURNAL_LINES})",
                ),
                _query("follow", {"type": "boolean"}, f"keep streaming new lines: {_BOOL_WORDS}"),
                _query(
                    "output",
                    _string(enum=list(JOURNAL_OUTPUTS)),
                    f"journalctl's --output format (default {DEFAULT_JOURNAL_OUTPUT})",
                ),
            ],
            "responses": _responses(
                {
                    "200": {
                        "description": "the journal, one entry per line (chunked)",
                        "content": {TEXT: {"schema": _string()}},
                    },
                    "404": _error(
                        "the unit has no journal here, or the machine is not this fleetd's",
                        {
                            "X-Fleet-Machine-IP": {
                                "schema": _string(),
                                "description": "where the machine's own fleetd is, when known",
                            }
                        },
                    ),
                    "429": _error(
                        f"this fleetd already streams {MAX_JOURNAL_FOLLOWS} journals with follow",
                        {
                            "Retry-After": {
                                "schema": _string(pattern="^[0-9]+$"),
                                "description": f"seconds to wait ({FOLLOW_RETRY_AFTER})",
                            }
                        },
                    ),
                },
                "400",
                "501",
            ),
        },
    },
    "/fleet/v1/machines/{machineID}/status/{unitName}": {
        "parameters": [_param("machineID"), _param("unitName")],
        "get": {
            "operationId": "Machines.Status",
            "summary": "systemctl status of the unit on that machine (beyond fleet)",
            "description": "Only the machine's own fleetd answers; another answers 404 saying where to ask.",
            "responses": _responses(
                {
                    "200": {
                        "description": "systemctl status output",
                        "headers": {
                            "X-Fleet-Exit-Code": {
                                "description": "systemctl status's exit code (0 active, 3 inactive, 4 no such unit)",
                                "schema": {"type": "string", "pattern": "^-?[0-9]+$"},
                            }
                        },
                        "content": {TEXT: {"schema": _string()}},
                    },
                    "404": _error(
                        "the unit is not loaded here, or the machine is not this fleetd's",
                        {"X-Fleet-Machine-IP": {"schema": _string()}},
                    ),
                },
                "400",
                "501",
            ),
        },
    },
    "/fleet/v1/units/{unitName}/revisions": {
        "parameters": [_param("unitName")],
        "get": {
            "operationId": "Units.Revisions",
            "summary": "the kept revisions of a unit, oldest first (beyond fleet)",
            "responses": _responses(
                {
                    "200": _json(
                        "its revisions (without their bodies)",
                        {
                            "type": "object",
                            "required": ["revisions"],
                            "additionalProperties": False,
                            "properties": {"revisions": {"type": "array", "items": _schema("UnitRevision")}},
                        },
                    ),
                    "404": _error("no such unit"),
                },
                "400",
            ),
        },
    },
    "/fleet/v1/units/{unitName}/revisions/{revision}": {
        "parameters": [
            _param("unitName"),
            _path("revision", {"type": "integer", "minimum": 1, "maximum": 9_999_999_999}, "a revision number"),
        ],
        "get": {
            "operationId": "Units.Revision",
            "summary": "one kept revision of a unit, with its body (beyond fleet)",
            "responses": _responses(
                {"200": _json("the revision and its options", _schema("UnitRevision")), "404": _error("not kept")},
                "400",
            ),
        },
    },
    "/fleet/v1/events": {
        "get": {
            "operationId": "Events.List",
            "summary": "the cluster's history, oldest first, a page at a time (beyond fleet)",
            "description": (
                "Decisions of the engine and the agents: placed, moved, started, failed, machine-lost, ... "
                "kept within the cluster's retention (count and age). With follow=true the answer is a "
                "stream instead (application/x-ndjson, one event per line, the stored ones and then each new "
                "one as it is recorded, without end; at most a bounded number at once, 429 beyond): not "
                "described as a parameter here, since a stream without end is no request/response pair."
            ),
            "parameters": [
                _query(
                    "unitName",
                    _string(pattern=UNIT_NAME_PATTERN, maxLength=MAX_NAME_LENGTH),
                    "only this unit's events",
                ),
                *_PAGING,
            ],
            "responses": _responses({"200": _json("a page of events", _schema("EventPage"))}, "400"),
        }
    },
    "/fleet/v1/updates": {
        "get": {
            "operationId": "Updates.List",
            "summary": "every unit's latest rolling update record (beyond fleet)",
            "responses": _responses(
                {
                    "200": _json(
                        "the records, and the names of any that cannot be read",
                        {
                            "type": "object",
                            "required": ["updates", "unreadable"],
                            "properties": {
                                "updates": {"type": "array", "items": _schema("Update")},
                                "unreadable": {"type": "object", "additionalProperties": _string()},
                            },
                        },
                    )
                }
            ),
        },
    },
    "/fleet/v1/updates/{unitName}": {
        "parameters": [_param("unitName")],
        "get": {
            "operationId": "Updates.Get",
            "summary": "the record of a unit's latest rolling update (beyond fleet)",
            "responses": _responses(
                {"200": _json("the record", _schema("Update")), "404": _error("the unit never had an update")},
                "400",
                "409",
            ),
        },
        "post": {
            "operationId": "Updates.Create",
            "summary": "start a rolling update or rollback of a unit (beyond fleet)",
            "description": (
                "Writes the update's record and nothing else; the engine leader replaces at most maxParallel "
                "instances at a time, each healthy (active on the new body for minHealthy seconds) before the "
                "next, and stops when one is not healthy within healthyDeadline, reverting what it changed "
                "unless autoRevert is false. Follow it with GET /updates/{unitName}. 400: a bad body, an "
                "instance, a global unit, a plain unit that is not launched, the body it already has; 404: no "
                "such unit or revision; 409: an update of the unit is in progress. Nothing is written then."
            ),
            "requestBody": {"required": True, "content": {JSON: {"schema": _schema("UpdateRequest")}}},
            "responses": _responses(
                {
                    "201": _json(
                        "the record as written (state pending)",
                        _schema("Update"),
                        {"GetUpdate": _link("Updates.Get", unitName="$request.path.unitName")},
                    )
                },
                "400",
                "404",
                "409",
                "413",
            ),
        },
    },
    "/fleet/v1/unplaceable": {
        "get": {
            "operationId": "Unplaceable.List",
            "summary": "the engine's reasons for the units it cannot place (beyond fleet)",
            "responses": _responses({"200": _json("unit name -> reason", _schema("Unplaceable"))}),
        }
    },
    "/fleet/v1/discovery": {
        "get": {
            "operationId": "Discovery.Get",
            "summary": "fleet's Google discovery document of this API",
            "responses": _responses({"200": _json("the discovery document", {"type": "object"})}),
        }
    },
    "/fleet/v1/openapi.json": {
        "get": {
            "operationId": "OpenAPI.Get",
            "summary": "this document",
            "responses": _responses({"200": _json("the OpenAPI description", {"type": "object"})}),
        }
    },
    "/metrics": {
        "get": {
            "operationId": "Metrics.Get",
            "summary": "Prometheus metrics of this fleetd, and of the cluster on the engine leader (beyond fleet)",
            "description": (
                "Answers even while this fleetd must not serve, to show that state. Reads nothing from etcd. "
                "OpenMetrics when Accept asks for application/openmetrics-text; every series is in docs/metrics.md."
            ),
            "responses": {
                "200": {
                    "description": "Prometheus text format 0.0.4, or OpenMetrics 1.0",
                    "content": {
                        TEXT: {"schema": _string()},
                        "application/openmetrics-text": {"schema": _string()},
                    },
                },
                "401": _ref("responses", "Unauthorized"),
            },
        }
    },
}


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI description; ``server_url`` is where it is served from (``/``: the same
    origin as the request that asked for it)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "fleet API",
            "version": "v1",
            "description": (
                "fleet's HTTP API v1 (units, state, machines, discovery) as fleetd serves it, and what "
                "it adds: unplaceable units, a unit's journal and status on its machine, metrics, batches of units "
                "(POST /units:batch), a long-poll of unit states (GET /state?wait=true). "
                f"Request bodies are at most {MAX_REQUEST_BYTES} bytes ({MAX_BATCH_BYTES} for a batch). "
                "Every error answers "
                '{"error": {"code": N, "message": "..."}}; a path that does not exist answers 404, a '
                "method a path does not have 405 with Allow. As in fleet, every /fleet/v1 route is "
                "also served under /v1-alpha, and /, /fleet/v1 and /v1-alpha answer 405 to any method."
            ),
        },
        "servers": [{"url": server_url}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required on TCP listeners configured with api_token; never on the unix socket",
                }
            },
        },
        "security": [{}, {"bearer": []}],
    }


__all__ = ["OPENAPI_VERSION", "UNIT_NAME_PATTERN", "openapi_document"]

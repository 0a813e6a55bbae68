"""The machine-readable description served at ``GET /fleet/v1/discovery``.

Hand-written, in the spirit of the Google discovery document fleet served: schemas, then
resources with their methods, paths, parameters and request/response schemas. A test checks
that every route of the application is described here and nothing else.
"""

from __future__ import annotations

from typing import Any

from fleetd.model.limits import MAX_PAGE_SIZE

_STRING = {"type": "string"}
_PAGE_TOKEN = {"type": "string", "location": "query", "description": "nextPageToken of the previous page"}
_PAGE_SIZE = {
    "type": "integer",
    "location": "query",
    "description": f"items per page (default token_limit, at most {MAX_PAGE_SIZE})",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": name}


SCHEMAS: dict[str, Any] = {
    "UnitOption": {
        "id": "UnitOption",
        "type": "object",
        "properties": {"section": _STRING, "name": _STRING, "value": _STRING},
    },
    "Unit": {
        "id": "Unit",
        "type": "object",
        "properties": {
            "name": _STRING,
            "options": {"type": "array", "items": _ref("UnitOption")},
            "desiredState": {"type": "string", "enum": ["inactive", "loaded", "launched"]},
            "currentState": {"type": "string", "enum": ["inactive", "loaded", "launched"]},
            "machineID": {"type": "string", "description": "placed machine; empty when unplaced or global"},
        },
    },
    "UnitPage": {
        "id": "UnitPage",
        "type": "object",
        "properties": {"units": {"type": "array", "items": _ref("Unit")}, "nextPageToken": _STRING},
    },
    "UnitState": {
        "id": "UnitState",
        "type": "object",
        "properties": {
            "name": _STRING,
            "hash": _STRING,
            "machineID": _STRING,
            "systemdLoadState": _STRING,
            "systemdActiveState": _STRING,
            "systemdSubState": _STRING,
        },
    },
    "UnitStatePage": {
        "id": "UnitStatePage",
        "type": "object",
        "properties": {"states": {"type": "array", "items": _ref("UnitState")}, "nextPageToken": _STRING},
    },
    "Machine": {
        "id": "Machine",
        "type": "object",
        "properties": {
            "id": _STRING,
            "primaryIP": _STRING,
            "metadata": {"type": "object", "additionalProperties": _STRING},
        },
    },
    "MachinePage": {
        "id": "MachinePage",
        "type": "object",
        "properties": {"machines": {"type": "array", "items": _ref("Machine")}, "nextPageToken": _STRING},
    },
    "MetadataPatch": {
        "id": "MetadataPatch",
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "op": {"type": "string", "enum": ["add", "remove", "replace"]},
                "path": {"type": "string", "pattern": "^/<machineID>/metadata/<key>$"},
                "value": {"description": 'a string, or {"value": "..."} as fleet\'s own client sends it'},
            },
        },
    },
    "Unplaceable": {
        "id": "Unplaceable",
        "type": "object",
        "properties": {"units": {"type": "object", "additionalProperties": _STRING}},
    },
    "EventPage": {
        "id": "EventPage",
        "type": "object",
        "properties": {
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "time": _STRING,
                        "unit": _STRING,
                        "machine": _STRING,
                        "event": _STRING,
                        "reason": _STRING,
                        "revision": {"type": "integer"},
                    },
                },
            },
            "nextPageToken": _STRING,
        },
    },
    "UpdateRequest": {
        "id": "UpdateRequest",
        "type": "object",
        "properties": {
            "options": {"type": "array", "items": _ref("UnitOption")},
            "revision": {"description": 'a kept revision number, or "previous"'},
            "maxParallel": {"type": "integer"},
            "minHealthy": {"type": "number"},
            "healthyDeadline": {"type": "number"},
            "autoRevert": {"type": "boolean"},
        },
    },
    "Error": {
        "id": "Error",
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {"code": {"type": "integer"}, "message": _STRING}}},
    },
}

RESOURCES: dict[str, Any] = {
    "Units": {
        "methods": {
            "List": {
                "httpMethod": "GET",
                "path": "units",
                "parameters": {"nextPageToken": _PAGE_TOKEN, "pageSize": _PAGE_SIZE},
                "response": _ref("UnitPage"),
            },
            "Get": {
                "httpMethod": "GET",
                "path": "units/{unitName}",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
                "response": _ref("Unit"),
            },
            "Set": {
                "httpMethod": "PUT",
                "path": "units/{unitName}",
                "description": (
                    "create (201, options required, inactive without desiredState; an instance "
                    "without options is made from its template), replace different options (201) or "
                    "change desiredState (204)"
                ),
                "parameters": {
                    "unitName": {"type": "string", "location": "path", "required": True},
                    "replace": {"type": "boolean", "location": "query"},
                },
                "request": _ref("Unit"),
            },
            "Delete": {
                "httpMethod": "DELETE",
                "path": "units/{unitName}",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
            },
            "Batch": {
                "httpMethod": "POST",
                "path": "units:batch",
                "description": (
                    'beyond fleet: {"units": [Set bodies with their name], "destroy": [names], "replace": bool}, '
                    "every unit checked before anything is written (see /fleet/v1/openapi.json)"
                ),
            },
        }
    },
    "UnitState": {
        "methods": {
            "List": {
                "httpMethod": "GET",
                "path": "state",
                "parameters": {
                    "machineID": {"type": "string", "location": "query"},
                    "unitName": {"type": "string", "location": "query"},
                    "nextPageToken": _PAGE_TOKEN,
                    "pageSize": _PAGE_SIZE,
                    # beyond fleet: a long-poll after the X-Fleet-Index of a previous answer
                    "wait": {"type": "boolean", "location": "query"},
                    "index": {"type": "integer", "location": "query"},
                    "timeout": {"type": "integer", "location": "query"},
                },
                "response": _ref("UnitStatePage"),
            },
            "Get": {
                "httpMethod": "GET",
                "path": "state/{unitName}",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
                "response": _ref("UnitState"),
            },
        }
    },
    "Machines": {
        "methods": {
            "List": {
                "httpMethod": "GET",
                "path": "machines",
                "parameters": {"nextPageToken": _PAGE_TOKEN, "pageSize": _PAGE_SIZE},
                "response": _ref("MachinePage"),
            },
            "Patch": {"httpMethod": "PATCH", "path": "machines", "request": _ref("MetadataPatch")},
            "Journal": {
                "httpMethod": "GET",
                "path": "machines/{machineID}/journal/{unitName}",
                "description": "stream the unit's journal (text/plain, chunked); only the machine's own fleetd answers",
                "parameters": {
                    "machineID": {"type": "string", "location": "path", "required": True},
                    "unitName": {"type": "string", "location": "path", "required": True},
                    "lines": {"type": "integer", "location": "query", "default": 10},
                    "follow": {"type": "boolean", "location": "query", "default": False},
                    "output": {"type": "string", "location": "query", "default": "short"},
                },
            },
            "Status": {
                "httpMethod": "GET",
                "path": "machines/{machineID}/status/{unitName}",
                "description": "systemctl status text (text/plain); only the machine's own fleetd answers",
                "parameters": {
                    "machineID": {"type": "string", "location": "path", "required": True},
                    "unitName": {"type": "string", "location": "path", "required": True},
                },
            },
        }
    },
    "Unplaceable": {"methods": {"List": {"httpMethod": "GET", "path": "unplaceable", "response": _ref("Unplaceable")}}},
    "Revisions": {
        "methods": {
            "List": {
                "httpMethod": "GET",
                "path": "units/{unitName}/revisions",
                "description": "the kept revisions of a unit, oldest first",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
            },
            "Get": {
                "httpMethod": "GET",
                "path": "units/{unitName}/revisions/{revision}",
                "description": "one kept revision, with its options",
                "parameters": {
                    "unitName": {"type": "string", "location": "path", "required": True},
                    "revision": {"type": "integer", "location": "path", "required": True},
                },
            },
        }
    },
    "Events": {
        "methods": {
            "List": {
                "httpMethod": "GET",
                "path": "events",
                "description": "the cluster's history, oldest first; follow=true streams it (one JSON event per line)",
                "parameters": {
                    "unitName": {"type": "string", "location": "query"},
                    "follow": {"type": "boolean", "location": "query"},
                    "nextPageToken": _PAGE_TOKEN,
                    "pageSize": _PAGE_SIZE,
                },
                "response": _ref("EventPage"),
            }
        }
    },
    "Updates": {
        "methods": {
            "List": {"httpMethod": "GET", "path": "updates", "description": "every unit's latest rolling update"},
            "Create": {
                "httpMethod": "POST",
                "path": "updates/{unitName}",
                "description": "start a rolling update (options) or rollback (revision) of a unit",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
                "request": _ref("UpdateRequest"),
            },
            "Get": {
                "httpMethod": "GET",
                "path": "updates/{unitName}",
                "description": "the record of a unit's latest rolling update",
                "parameters": {"unitName": {"type": "string", "location": "path", "required": True}},
            },
        }
    },
    "Discovery": {"methods": {"Get": {"httpMethod": "GET", "path": "discovery"}}},
    "OpenAPI": {
        "methods": {
            "Get": {"httpMethod": "GET", "path": "openapi.json", "description": "this API as an OpenAPI 3.1 document"}
        }
    },
}


def discovery_document() -> dict[str, Any]:
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "fleet:v1",
        "name": "fleet",
        "version": "v1",
        "title": "fleet API",
        "protocol": "rest",
        "basePath": "/fleet/v1/",
        "servicePath": "fleet/v1/",
        "errors": 'every error answers {"error": {"code": N, "message": "..."}}',
        "schemas": SCHEMAS,
        "resources": RESOURCES,
    }


__all__ = ["discovery_document"]

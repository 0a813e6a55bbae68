"""Unit revisions over the API and fleetctl (both drivers), over a real etcd."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from fleetctl_support import Fleet, fleetctl, write_units

M1 = "113f16a7" + "0" * 24
V1 = "[Unit]\nDescription=v1\n\n[Service]\nExecStart=/bin/sleep 1\n"
V2 = "[Unit]\nDescription=v2\n\n[Service]\nExecStart=/bin/sleep 2\n"
V3 = "[Unit]\nDescription=v3\n\n[Service]\nExecStart=/bin/sleep 3\n"


def api_get(base: str, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{base}/fleet/v1{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_every_replace_is_a_revision_listed_shown_and_in_the_history(fleet: Fleet, tmp_path: Path) -> None:
    api = fleet.add_api(M1, token=None)
    env = {"FLEETCTL_ENDPOINT": api.unix}
    for body in (V1, V2, V3):
        write_units(tmp_path, {"app.service": body})
        result = fleetctl("submit", "--replace", "app.service", env=env, cwd=tmp_path)
        assert result.code == 0, result.err
    result = fleetctl("revisions", "app", env=env)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["REVISION", "HASH", "TIME", "ORIGIN"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert lines[3].split()[1] == "(current)" and "API (fleetctl)" in lines[1]
    # an old body, exactly as it was
    result = fleetctl("cat", "--revision=1", "app.service", env=env)
    assert (result.code, result.out) == (0, V1)
    assert fleetctl("cat", "app.service", env=env).out == V3
    result = fleetctl("cat", "--revision=9", "app.service", env=env)
    assert result.code == 1 and "has no revision 9 (kept: 1, 2, 3)" in result.err
    # JSON, and the API's own answers
    listed = json.loads(fleetctl("revisions", "-o", "json", "app.service", env=env).out)
    assert [r["revision"] for r in listed] == [1, 2, 3] and all(len(r["hash"]) == 40 for r in listed)
    status, body = api_get(api.tcp, "/units/app.service/revisions/2")
    assert status == 200 and body["revision"] == 2 and body["options"][0]["value"] == "v2"
    status, body = api_get(api.tcp, "/units/app.service")
    assert status == 200 and body["revision"] == 3
    assert api_get(api.tcp, "/units/app.service/revisions/0")[0] == 400
    assert api_get(api.tcp, "/units/nothing.service/revisions")[0] == 404
    # the history names each replace with its revision and who asked
    changes = [
        e
        for e in json.loads(fleetctl("history", "-o", "json", "app.service", env=env).out)
        if e["event"] == "revision-changed"
    ]
    assert [(e["revision"], e["reason"]) for e in changes] == [
        (2, "revision 2 by API (fleetctl)"),
        (3, "revision 3 by API (fleetctl)"),
    ]


def test_the_etcd_driver_keeps_revisions_too(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add_api(M1, token=None)
    env = {"FLEETCTL_DRIVER": "etcd", "FLEETCTL_ENDPOINT": ",".join(fleet.etcd.endpoints)}
    env["FLEETCTL_ETCD_KEY_PREFIX"] = fleet.prefix
    for body in (V1, V2):
        write_units(tmp_path, {"db.service": body})
        assert fleetctl("submit", "--replace", "db.service", env=env, cwd=tmp_path).code == 0
    listed = json.loads(fleetctl("revisions", "-o", "json", "db.service", env=env).out)
    assert [(r["revision"], r["origin"]) for r in listed] == [
        (1, "fleetctl --driver etcd"),
        (2, "fleetctl --driver etcd"),
    ]
    assert fleetctl("cat", "--revision=1", "db", env=env).out == V1
    assert fleetctl("revisions", "nothing.service", env=env).code == 1

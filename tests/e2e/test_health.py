"""Health that tells the truth: `/readyz` is ready only while every partition of every kind
has a live owner (and NATS and the read store answer), every service answers the NATS micro
service ping, and every HTTP error has the one error shape."""

from __future__ import annotations

import json
import signal

import nats

from services.localsystem import LocalSystem
from tests.conftest import running
from tests.support import eventually, http

SERVICES = {"durachat-room", "durachat-context", "durachat-ratelimit", "durachat-projector",
            "durachat-gateway"}


async def pinged(nc) -> set[str]:
    """The names of the services that answer `$SRV.PING` within half a second."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.PING", b"", reply=inbox)
    names = set()
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            names.add(json.loads(msg.data)["name"])
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return names


def readiness(system: LocalSystem) -> tuple[int, dict]:
    response = http(system, "GET", "/readyz")
    return response.status_code, response.json()


async def test_readyz_follows_the_owners_of_the_partitions(tmp_path):
    with running(LocalSystem(tmp_path, partitions=16)) as system:
        # Up: ready, every check says what it found; every service answers a ping.
        await eventually(lambda: readiness(system)[0] == 200, 20, lambda: str(readiness(system)))
        status, body = readiness(system)
        assert set(body["checks"]) == {"nats", "read_store", "leases.room", "leases.context",
                                       "leases.limiter", "leases.quota"}
        assert all(check["ok"] for check in body["checks"].values())
        nc = await nats.connect(system.nats.url)
        await eventually(lambda: _has_all(nc), 10, "every service answers $SRV.PING")
        # The only room replica dies: liveness stays, readiness goes within the lease TTL,
        # in the error shape, naming the kind whose partitions have no owner.
        system.rooms[0].process.send_signal(signal.SIGKILL)
        system.rooms[0].process.wait()
        assert http(system, "GET", "/healthz").status_code == 200
        await eventually(lambda: readiness(system)[0] == 503, 10, lambda: str(readiness(system)))
        status, body = readiness(system)
        assert body["error"]["code"] == "unavailable" and "leases.room" in body["error"]["message"]
        assert not body["checks"]["leases.room"]["ok"] and body["checks"]["leases.context"]["ok"]
        assert "no live owner for 0, 1," in body["checks"]["leases.room"]["detail"]
        # A new replica: ready again.
        system.start_room()
        await eventually(lambda: readiness(system)[0] == 200, 20, lambda: str(readiness(system)))
        await nc.close()


async def _has_all(nc) -> bool:
    return SERVICES <= await pinged(nc)


def test_every_http_error_has_the_one_shape(system):
    def error(method: str, path: str, **options) -> tuple[int, dict]:
        response = http(system, method, path, **options)
        assert response.headers["content-type"].startswith("application/json"), response.text
        body = response.json()
        assert set(body) == {"error"} and body["error"]["message"], body
        return response.status_code, body["error"]

    # Unknown things are 404 everywhere, a room's messages included.
    assert error("GET", "/api/rooms/nosuchroom")[0] == 404
    status, body = error("GET", "/api/rooms/nosuchroom/messages")
    assert (status, body["code"], body["message"]) == (404, "not_found", "No such room.")
    assert error("GET", "/api/nothing-here")[:1] == (404,)
    assert error("GET", "/no/such/page")[0] == 404
    # FastAPI's validation errors: the same shape, each field named.
    status, body = error("GET", "/api/rooms?limit=0")
    assert status == 422 and body["code"] == "invalid"
    assert body["fields"][0]["location"] == "query.limit" and "query.limit" in body["message"]
    # Errors the handlers raise: the same shape.
    status, body = error("GET", "/api/users/alice/context")
    assert status == 401 and body["code"] == "unauthorized"
    guest = http(system, "POST", "/api/session").json()
    status, body = error("PUT", f"/api/users/{guest['user_id']}/context", content="x",
                         headers={"content-type": "text/plain",
                                  "authorization": f"Bearer {guest['token']}"})
    assert status == 415 and body["code"] == "unsupported_media_type"
    # The OpenAPI says so.
    schema = http(system, "GET", "/openapi.json").json()
    assert "ErrorBody" in schema["components"]["schemas"]
    responses = schema["paths"]["/api/rooms/{name}/messages"]["get"]["responses"]
    assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")

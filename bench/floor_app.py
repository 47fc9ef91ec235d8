"""The floor of a spend over HTTP on this machine, for bench/points_redeem_http.py `--floor`: what uvicorn
(and FastAPI) cost per request before any database work. Not part of Orchard.

* `fastapi_app`: a bare FastAPI `async def` route at the spend's path, the body validated by the same
  `SpendIn` model, a small JSON answer — no dependencies, no database;
* `raw_app`: a plain ASGI callable that reads the body and answers the same bytes — uvicorn alone.
"""

from __future__ import annotations

from fastapi import FastAPI

from orchard.loyalty.schemas import SpendIn

fastapi_app = FastAPI()


@fastapi_app.post("/api/v1/members/{member_id}/points/spend")
async def spend(member_id: int, body: SpendIn) -> dict:
    return {"member_id": member_id, "amount": -body.amount, "external_id": body.external_id}


@fastapi_app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


_ANSWER = b'{"member_id":1,"amount":-1,"external_id":"x"}'


async def raw_app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": _ANSWER})

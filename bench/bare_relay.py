"""The reference point: a bare FastAPI relay with an aiohttp client, nothing else.

    uvicorn bench.bare_relay:app  (upstream from BARE_RELAY_UPSTREAM)

The gap between this and loragate is the cost of auth, checks, records and metrics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app.state.upstream = os.environ["BARE_RELAY_UPSTREAM"]
    yield
    await app.state.http.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/chat/completions")
async def relay(request: Request) -> Response:
    body = await request.body()
    if orjson.loads(body).get("stream"):
        return StreamingResponse(relay_stream(request, body), media_type="text/event-stream")
    async with request.app.state.http.post(
        request.app.state.upstream + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as upstream:
        data = await upstream.read()
    return Response(data, media_type="application/json")


async def relay_stream(request: Request, body: bytes) -> AsyncIterator[bytes]:
    async with request.app.state.http.post(
        request.app.state.upstream + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as upstream:
        async for line in upstream.content:
            yield line

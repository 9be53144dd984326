"""A raw ASGI app that answers ProxyStore's endpoint routes and does nothing else.

bench/http.py runs it under uvicorn as the "ceiling": no server can answer
ProxyStore's client faster than this one does, so it shows how much of each
figure is the client's own time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

UUID = "00000000-0000-4000-8000-000000000000"
SMALL = b"x" * 1024
ANSWERS = {
    "/endpoint": json.dumps({"uuid": UUID}).encode(),
    "/exists": b'{"exists": true}',
    "/get": SMALL,
}


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    send: Callable[[Mapping[str, Any]], Awaitable[None]],
) -> None:
    """Read the body, then answer with a fixed reply for the route."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = ANSWERS.get(scope["path"], b"")
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

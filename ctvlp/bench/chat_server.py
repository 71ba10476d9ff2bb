"""A small OpenAI-compatible chat-completions server for tests and ``make bench-annotate``.

It runs an aiohttp application on 127.0.0.1 (a free port) in a background thread. ``answer``
turns the request's messages into the reply content; ``fault`` (given the 1-based request number)
may make a request fail deterministically: ``"500"`` (HTTP 500), ``"malformed"`` (content that is
not JSON), ``"slow"`` (sleep ``slow_s`` before answering), ``"no_json_mode"`` (HTTP 400 when the
request asks for ``response_format``, as servers without JSON mode answer) or ``None``. Every request also waits
``latency_s``. ``requests`` counts the requests served.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable

from aiohttp import web

Answer = Callable[[list[dict[str, str]]], str]
Fault = Callable[[int], str | None]

_TAGGED = re.compile(r"<(findings|report)>\n(.*)\n</\1>", re.DOTALL)


def tagged_text(messages: list[dict[str, str]]) -> str:
    """The report text the annotation prompts put between ``<findings>`` / ``<report>`` tags."""
    match = _TAGGED.search(messages[-1]["content"])
    return match.group(2) if match else ""


class FakeChatServer:
    def __init__(
        self, answer: Answer, fault: Fault | None = None, latency_s: float = 0.0, slow_s: float = 5.0
    ):
        self.answer = answer
        self.fault = fault or (lambda n: None)
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.requests = 0
        self.authorization: str | None = None  # the last request's Authorization header
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.Response:
        with self._lock:
            self.requests += 1
            number = self.requests
            self.authorization = request.headers.get("Authorization")
        body = await request.json()
        fault = self.fault(number)
        await asyncio.sleep(self.latency_s + (self.slow_s if fault == "slow" else 0.0))
        if fault == "no_json_mode" and "response_format" in body:
            return web.Response(status=400, text="unsupported parameter: response_format")
        if fault == "500":
            return web.Response(status=500, text="internal error (simulated)")
        content = (
            "Sure! Here is the JSON you asked for: {"
            if fault == "malformed"
            else self.answer(body["messages"])
        )
        return web.json_response(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def start(self) -> FakeChatServer:
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-chat-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake chat server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""An aiohttp application served on 127.0.0.1 from a thread of its own, for tests and benchmarks that call it
from synchronous code (never anything but loopback)."""

from __future__ import annotations

import asyncio
import threading


class LoopbackApp:
    """Serves ``app`` on 127.0.0.1 at a free port (``.port``) until ``stop()``."""

    def __init__(self, app) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loopback aiohttp", daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app, access_log=None)
        self.port = asyncio.run_coroutine_threadsafe(self._start(web), self.loop).result(30)

    async def _start(self, web) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

"""A TCP proxy that can stop forwarding without closing anything (a partition that
keeps TCP open: the peer is there, nothing answers).

asyncio, in its own thread, on a loopback free port, forwarding to one target
port. :meth:`Blackhole.hold` stops moving bytes in both directions: connections stay
open, new ones are accepted (and connected to the target) but carry nothing, and
bytes read just before the hold wait in the proxy. :meth:`Blackhole.release`
forwards again, including what waited, as TCP would deliver it once a partition
heals: a request a client gave up on may still reach the server late. A side that
closes its end is closed on the other once the proxy forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Blackhole:
    """See the module docstring. ``port``: where clients connect."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_w)
        await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
        self._writers -= {writer, up_w}

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # read just before a hold: delivered after it
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await self._flowing.wait()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

    def hold(self) -> None:
        """Stop forwarding; close nothing."""
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def release(self) -> None:
        """Forward again (what waited first)."""
        self.loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        self.release()

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in list(self._writers):
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

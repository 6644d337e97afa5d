"""Fault injection for tests: a Redis server the test owns (stopped, frozen or killed at
will) and a TCP proxy in front of PostgreSQL that can refuse, answer "starting up" or
stall, like a restart or a network partition would."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path

import pytest

from tests.support import IN_CI, free_port


def require_redis_server() -> str:
    """The `redis-server` executable; skip (fail in CI) when it is not installed."""
    executable = shutil.which("redis-server")
    if executable is None:
        if IN_CI:
            pytest.fail("redis-server must be installed in CI: fault tests may not skip")
        pytest.skip("redis-server is not installed; fault tests need one to stop and kill")
    return executable


class RedisServer:
    """A throwaway `redis-server` on a free loopback port, nothing kept on disk."""

    def __init__(self, executable: str, port: int, directory: Path) -> None:
        self.executable = executable
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        command = [
            self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await self._wait_until_listening()

    async def _wait_until_listening(self) -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            return
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open and connections are accepted, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL: connections are reset and new ones refused; its data is gone."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        await asyncio.to_thread(self.process.wait)
        self.process = None

    async def restart(self) -> None:
        """Kill and start again on the same port, empty."""
        await self.kill()
        await self.start()


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """A running `RedisServer`, killed at the end whatever state it was left in."""
    executable = require_redis_server()
    with tempfile.TemporaryDirectory(prefix="redis-") as directory:
        server = RedisServer(executable, free_port(), Path(directory))
        await server.start()
        try:
            yield server
        finally:
            await server.kill()


class ProxyMode(StrEnum):
    FORWARD = "forward"  # pass bytes both ways
    REFUSE = "refuse"  # close new connections at once
    STARTING_UP = "starting_up"  # answer like a PostgreSQL server that is starting up
    STALL = "stall"  # accept, then never answer (a partition); open links stall too


# An ErrorResponse message ('E') with SQLSTATE 57P03, as PostgreSQL sends it while it
# is starting up, before closing the connection.
_STARTING_UP = b"SFATAL\x00VFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00"
STARTING_UP_MESSAGE = b"E" + (len(_STARTING_UP) + 4).to_bytes(4, "big") + _STARTING_UP
SSL_REQUEST_CODE = (80877103).to_bytes(4, "big")


class TcpProxy:
    """A loopback TCP proxy whose behaviour the test switches with `mode`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = ProxyMode.FORWARD
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a link ends however its peer or the test ends it
        finally:
            self._links.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is ProxyMode.REFUSE:
            return
        if self.mode is ProxyMode.STALL:
            await asyncio.Event().wait()
        if self.mode is ProxyMode.STARTING_UP:
            await self._read_startup(reader, writer)
            writer.write(STARTING_UP_MESSAGE)
            await writer.drain()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            self._writers.discard(upstream_writer)
            upstream_writer.close()

    async def _read_startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read the startup packet, declining TLS first if the client asks for it."""
        packet = await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big") - 4)
        if packet == SSL_REQUEST_CODE:
            writer.write(b"N")
            await writer.drain()
            await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big") - 4)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.mode is ProxyMode.STALL:  # a partition: this link never carries a byte again
                await asyncio.Event().wait()
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    def cut(self) -> None:
        """Reset every open connection (a server crash, or a proxy restart)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()


@asynccontextmanager
async def tcp_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()

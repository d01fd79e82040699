"""Servers the tests break on purpose: a Redis Cluster, and a proxy that cuts connections.

Everything listens on loopback ports, is started by the fixtures that use it
and is stopped by process id (or by closing its sockets) when they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import redis

from quart_tokengate.service.store.embedded import redis_server_binary
from quart_tokengate.service.testing import PrivateRedis

from .support import wait_for


class FreezableRedis(PrivateRedis):
    """A private redis-server that a test may also freeze (SIGSTOP) and thaw."""

    def freeze(self) -> None:
        """SIGSTOP the server: its sockets stay open and nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        super().stop()


def free_port_pair() -> int:
    """A free port ``p`` whose cluster bus port ``p + 10000`` is free too."""
    # Below the kernel's ephemeral range (32768 and up by default), both ports: an
    # outgoing connection or a port-0 bind of another test worker never takes them
    # between this check and redis-server's bind.
    for _ in range(200):
        port = random.randrange(10000, 22000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


class RedisCluster:
    """A real Redis Cluster: ``masters`` primaries with one replica each, on loopback.

    ``cluster-node-timeout`` is short (1 s), so a killed master's replica takes
    over within a few seconds.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self, masters: int = 3) -> None:
        self.ports = []
        while len(self.ports) < masters * 2:
            port = free_port_pair()
            if port not in self.ports and port + 10000 not in self.ports:
                self.ports.append(port)
        self.masters = masters
        self.dir = Path(tempfile.mkdtemp(prefix="tg-cluster-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """One node's URL: the service discovers the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS), "--save", "",
                "--appendonly", "no", "--dir", str(node_dir),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self.ping(port), timeout=10)

    def ping(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        cli = shutil.which("redis-cli")
        assert cli, "the cluster tests need redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        wait_for(self.healthy, timeout=30, interval=0.1)

    def info(self, port: int) -> dict[str, str]:
        with redis.Redis(port=port, socket_timeout=0.5) as client:
            info = client.execute_command("CLUSTER INFO")
        return {str(k): str(v) for k, v in info.items()}

    def healthy(self) -> bool:
        """Every running node says the cluster is ok, knows every node, serves every slot."""
        try:
            infos = [self.info(p) for p in self.processes]
        except redis.RedisError:
            return False
        return all(
            i.get("cluster_state") == "ok"
            and i.get("cluster_slots_ok") == "16384"
            and int(i.get("cluster_known_nodes", 0)) == len(self.ports)
            for i in infos
        )

    def primaries(self) -> list[int]:
        """The ports of the nodes now serving slots as masters."""
        found = []
        for port in self.processes:
            with redis.Redis(port=port, socket_timeout=0.5) as client:
                if client.info("replication")["role"] == "master":
                    found.append(port)
        return sorted(found)

    def primary_for(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot now."""
        with redis.Redis(port=next(iter(self.processes)), socket_timeout=0.5) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to the cluster, as when a machine dies."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class CuttingProxy:
    """A TCP proxy on loopback that can drop its connections at a chosen moment.

    ``cut_at(marker)`` arms it: the next client-to-server chunk that contains
    ``marker`` (say ``b"EVALSHA"``, or a script's SHA, or ``b"UPDATE sessions"``)
    is not forwarded; both sides of that connection are closed instead, as a
    network failure would. ``cut_at(marker, after=True)`` forwards that chunk
    first and cuts before the reply can come back: the server did the work,
    the client never hears of it. ``cut_all()`` drops every open connection now;
    ``refuse(True)`` refuses new connections. It runs its own event loop in a
    thread, so in-process apps and service processes can both use it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._markers: list[tuple[bytes, bool]] = []
        self._cuts = 0
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._lock = threading.Lock()

    # -- control, from the test's thread --
    def start(self) -> CuttingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def cut_at(self, marker: bytes, *, after: bool = False) -> None:
        with self._lock:
            self._markers.append((marker, after))

    @property
    def cuts(self) -> int:
        """How many connections were cut at a marker so far."""
        return self._cuts

    def cut_all(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)

    def refuse(self, refusing: bool) -> None:
        self._refusing = refusing
        if refusing:
            self.cut_all()

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._close_all()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the proxy, in its own loop --
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _take_marker(self, chunk: bytes) -> bool | None:
        """``None`` to forward ``chunk``; else cut, after forwarding it or not."""
        with self._lock:
            for marker, after in self._markers:
                if marker in chunk:
                    self._markers.remove((marker, after))
                    self._cuts += 1
                    return after
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        muted: list[bool] = []

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
        ) -> None:
            try:
                while chunk := await src.read(65536):
                    if muted:
                        continue  # the reply that is lost
                    cut = self._take_marker(chunk) if upstream else None
                    if cut is not None:
                        if cut:  # the server gets it; its reply is lost
                            muted.append(True)
                            dst.write(chunk)
                            await dst.drain()
                            await asyncio.sleep(0.05)
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        self._writers -= {writer, up_writer}


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(port).start()
    try:
        yield proxy
    finally:
        proxy.stop()

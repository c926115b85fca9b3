"""The router's client to workers (``corral.router.upstream``) against a real HTTP server on
loopback that answers as the test script says: reuse, stale connections, cuts, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corral.router.upstream import Upstream, WorkerConnectionError, WorkerTimeoutError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """asyncio server; counts connections and requests; ``handler`` answers one request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                await self.handler(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def fixed(body: bytes) -> Handler:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

    return answer


def chunked(pieces: list[bytes], *, cut: bool = False) -> Handler:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        if cut:
            writer.transport.abort()
            return
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return answer


async def post(upstream: Upstream, server: Server, body: bytes = b'{"model":"m"}', timeout: float = 5.0):
    return await upstream.post(server.url, "/api/generate", body, [("content-type", "application/json")],
                               first_byte_timeout=timeout)


def test_whole_answer_and_connection_reuse():
    async def main() -> None:
        async with Server(fixed(b'{"done":true}')) as server:
            upstream = Upstream(connect_timeout=2)
            for _ in range(3):
                reply = await post(upstream, server)
                assert reply.status == 200
                assert reply.header(b"content-type") == b"application/json"
                assert await reply.read_all() == b'{"done":true}'
                assert reply.complete
                reply.release()
            assert server.connections == 1  # one keep-alive connection served all three
            assert server.requests[0].startswith(b"POST /api/generate HTTP/1.1\r\n")
            assert server.requests[0].endswith(b'\r\n\r\n{"model":"m"}')
            upstream.close()

    asyncio.run(main())


def test_streamed_answer_in_pieces():
    async def main() -> None:
        lines = [b'{"response":"a"}\n', b'{"response":"b"}\n', b'{"done":true}\n']
        async with Server(chunked(lines)) as server:
            upstream = Upstream(connect_timeout=2)
            reply = await post(upstream, server)
            assert reply.header(b"content-length") is None
            got = b""
            while chunk := await reply.read():
                got += chunk
            assert got == b"".join(lines)
            reply.release()
            upstream.close()

    asyncio.run(main())


def test_a_cut_stream_gives_what_came_then_fails():
    async def main() -> None:
        async with Server(chunked([b'{"response":"a"}\n'], cut=True)) as server:
            upstream = Upstream(connect_timeout=2)
            reply = await post(upstream, server)
            assert await reply.read() == b'{"response":"a"}\n'
            with pytest.raises(WorkerConnectionError):
                while await reply.read():
                    pass
            reply.release()
            # a broken connection is never reused
            assert server.connections == 1
            upstream.close()

    asyncio.run(main())


def test_an_idle_connection_the_worker_closed_is_replaced():
    async def close_after(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fixed(b"{}")(_reader, writer)
        writer.close()  # the worker drops the keep-alive connection after answering

    async def main() -> None:
        async with Server(close_after) as server:
            upstream = Upstream(connect_timeout=2)
            first = await post(upstream, server)
            assert await first.read_all() == b"{}"
            first.release()
            await asyncio.sleep(0.1)
            second = await post(upstream, server)  # not an error: a fresh connection
            assert await second.read_all() == b"{}"
            second.release()
            assert server.connections == 2
            upstream.close()

    asyncio.run(main())


def test_refused_and_silent_workers_fail_fast():
    async def silent(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        upstream = Upstream(connect_timeout=2)
        async with Server(fixed(b"")) as gone:
            url = gone.url
        with pytest.raises(WorkerConnectionError, match="dial tcp"):
            await upstream.post(url, "/api/chat", b"{}", [], first_byte_timeout=5)
        async with Server(silent) as server:
            started = asyncio.get_running_loop().time()
            with pytest.raises(WorkerTimeoutError):
                await post(upstream, server, timeout=0.3)
            assert asyncio.get_running_loop().time() - started < 5
        upstream.close()

    asyncio.run(main())


def test_an_owner_can_abandon_the_wait():
    """The router fails a reply whose client left: the wait ends and the worker sees the close."""

    async def main() -> None:
        seen_close = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
            await reader.read()  # returns at EOF: the router closed the connection
            seen_close.set()

        class Owner:
            reply = None

        owner = Owner()
        async with Server(hold) as server:
            upstream = Upstream(connect_timeout=2)
            waiting = asyncio.ensure_future(
                upstream.post(server.url, "/api/generate", b"{}", [], first_byte_timeout=30, owner=owner)
            )
            await asyncio.sleep(0.2)
            owner.reply.fail(WorkerConnectionError("the client went away"))
            with pytest.raises(WorkerConnectionError, match="client went away"):
                await waiting
            await asyncio.wait_for(seen_close.wait(), 5)
            upstream.close()

    asyncio.run(main())


class Sink:
    """What ``Reply.pipe`` hands pieces to: records them; ``full`` says the client is behind."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.full = False
        self.drains = 0
        self.reading_while_full: list[bool] = []  # was the worker connection read while we drained?
        self.reply = None

    def __call__(self, data: bytes) -> bool:
        self.pieces.append(data)
        return not self.full

    async def drained(self) -> None:
        self.drains += 1
        if self.reply is not None:
            self.reading_while_full.append(self.reply.conn.transport.is_reading())
        await asyncio.sleep(0.05)
        self.full = False


def test_a_piped_stream_reaches_the_sink_and_the_connection_is_reused():
    async def main() -> None:
        lines = [b'{"response":"a"}\n', b'{"response":"b"}\n', b'{"done":true}\n']
        async with Server(chunked(lines)) as server:
            upstream = Upstream(connect_timeout=2)
            for _ in range(2):
                reply = await post(upstream, server)
                first = await reply.read()
                sink = Sink()
                await reply.pipe(sink, sink.drained, gap=5)
                assert first + b"".join(sink.pieces) == b"".join(lines)
                assert len(sink.pieces) >= 1 and reply.complete
                reply.release()
            assert server.connections == 1
            upstream.close()

    asyncio.run(main())


def test_a_cut_piped_stream_fails_after_what_came():
    async def main() -> None:
        async with Server(chunked([b'{"response":"a"}\n', b'{"response":"b"}\n'], cut=True)) as server:
            upstream = Upstream(connect_timeout=2)
            reply = await post(upstream, server)
            sink = Sink()
            with pytest.raises(WorkerConnectionError):
                await reply.pipe(sink, sink.drained, gap=5)
            assert b"".join(sink.pieces) == b'{"response":"a"}\n{"response":"b"}\n'
            reply.release()
            upstream.close()

    asyncio.run(main())


def test_a_piped_stream_that_goes_quiet_times_out_once_per_gap():
    async def slow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for gap in (0.1, 0.1, 0.1, 0.1, 0.1, 3.0):  # steady pieces (each well within the gap), then silence
            writer.write(b"2\r\nx\n\r\n")
            await writer.drain()
            await asyncio.sleep(gap)

    async def main() -> None:
        async with Server(slow) as server:
            upstream = Upstream(connect_timeout=2)
            reply = await post(upstream, server)
            sink = Sink()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(WorkerTimeoutError):
                await reply.pipe(sink, sink.drained, gap=0.3)
            # 0.5 s of pieces kept it going; the silence ended it within two gaps of the last piece
            assert len(sink.pieces) == 6
            assert 0.5 < loop.time() - started < 1.3
            reply.release()
            upstream.close()

    asyncio.run(main())


def test_a_full_sink_pauses_the_worker_connection_until_drained():
    async def main() -> None:
        lines = [b"%d\n" % i for i in range(5)]
        async with Server(chunked(lines)) as server:
            upstream = Upstream(connect_timeout=2)
            reply = await post(upstream, server)
            sink = Sink()
            sink.reply = reply
            sink.full = True  # behind from the first piece on
            await reply.pipe(sink, sink.drained, gap=5)
            assert b"".join(sink.pieces) == b"".join(lines)
            assert sink.drains == 1 and sink.reading_while_full == [False]
            reply.release()
            upstream.close()

    asyncio.run(main())

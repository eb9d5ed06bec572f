#!/usr/bin/env python3
"""The soak's faulty upstream: an HTTP/1.1 server on loopback whose paths misbehave on purpose.

    bench/soak_upstream.py PORT

The last segment of the path picks the behaviour; anything else gets a small 200.

  reset-head   reads the request, then resets the connection (RST) without answering
  reset-body   a 200 head promising 10000 bytes, 1000 of them, then a reset
  unavailable  503 with a JSON body of its own (so a client can tell it from sluice's problems)
  stall        reads the request and never answers; closes when the peer does (at most 30 s)
  slow-head    the head after 300 ms, then a small body
  slow-body    a head promising 1000 bytes, sent 100 at a time every 50 ms (0.5 s in all)
  drip         a head promising 10000 bytes, 100 every 100 ms (10 s: past any soak deadline)
  big          a 200 of `?size=N` bytes (default 1 MiB) at once, for slow readers

Connections are kept alive between requests, except after a reset, a stall or a drip.
Started and stopped by bench/soak.py; standard library only.
"""

import asyncio
import socket
import struct
import sys

SMALL = b'{"id":42,"name":"Ada Lovelace","status":"active"}'
STALL_MAX = 30.0  # seconds a stalled connection is held at most, if its peer never closes it


def head(status, length, reason="OK"):
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def reset(writer):
    """Close with a RST rather than a FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def ok(reader, writer, query):
    writer.write(head(200, len(SMALL)) + SMALL)
    await writer.drain()
    return True


async def reset_head(reader, writer, query):
    reset(writer)
    return False


async def reset_body(reader, writer, query):
    writer.write(head(200, 10000) + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)  # the 1000 bytes leave before the RST overtakes them
    reset(writer)
    return False


async def unavailable(reader, writer, query):
    body = b'{"fault":"unavailable"}'
    writer.write(head(503, len(body), "Service Unavailable") + body)
    await writer.drain()
    return True


async def stall(reader, writer, query):
    try:
        await asyncio.wait_for(reader.read(), STALL_MAX)
    except asyncio.TimeoutError:
        pass
    return False


async def slow_head(reader, writer, query):
    await asyncio.sleep(0.3)
    return await ok(reader, writer, query)


async def trickle(writer, total, piece, gap):
    writer.write(head(200, total))
    for _ in range(total // piece):
        await writer.drain()
        await asyncio.sleep(gap)
        writer.write(b"x" * piece)
    await writer.drain()


async def slow_body(reader, writer, query):
    await trickle(writer, 1000, 100, 0.05)
    return True


async def drip(reader, writer, query):
    await trickle(writer, 10000, 100, 0.1)  # sluice cuts it off long before the end
    return False


async def big(reader, writer, query):
    size = int(query.get("size", 1 << 20))
    writer.write(head(200, size) + b'"' + b"x" * (size - 2) + b'"')
    await writer.drain()
    return True


FAULTS = {"reset-head": reset_head, "reset-body": reset_body, "unavailable": unavailable,
          "stall": stall, "slow-head": slow_head, "slow-body": slow_body, "drip": drip,
          "big": big}


async def read_request(reader):
    """The request's path and query; its body (by length or chunked) is read and dropped."""
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    target = lines[0].split()[1]
    fields = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    if "chunked" in fields.get("transfer-encoding", ""):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers come from sluice
    elif length := int(fields.get("content-length", "0").strip() or 0):
        await reader.readexactly(length)
    path, _, query = target.partition("?")
    return path, dict(p.split("=", 1) for p in query.split("&") if "=" in p)


async def serve(reader, writer):
    try:
        keep = True
        while keep:
            path, query = await read_request(reader)
            keep = await FAULTS.get(path.rsplit("/", 1)[-1], ok)(reader, writer, query)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass  # the peer went away, or sent something this server does not read
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True,
                                        backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

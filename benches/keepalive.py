#!/usr/bin/env python3
"""Idle HTTP/1.1 keep-alive connections for benches/keepalive.sh.

keepalive.py PORT N TOKEN HOLD_S: opens N connections to 127.0.0.1:PORT from
127.0.0.2-127.0.0.5 (200 at a time), sends one GET with the token on each and reads its
200, leaves them open and idle, prints `OPEN n`, holds them HOLD_S seconds and exits.
"""
import asyncio
import sys


async def one(port, token, i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 4}", 0))
    w.write(f"GET /poll HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await r.readexactly(int(line.split(b":")[1]))
    conns.append(w)


async def main():
    port, n, token, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    conns, sem = [], asyncio.Semaphore(200)

    async def limited(i):
        async with sem:
            await one(port, token, i, conns)

    results = await asyncio.gather(*(limited(i) for i in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    print(f"OPEN {len(conns)} ERRORS {len(errors)}", flush=True)
    for e in errors[:3]:
        print(f"error: {e!r}", file=sys.stderr)
    await asyncio.sleep(hold)


asyncio.run(main())

#!/usr/bin/env python3
"""Helpers for bench/memory.sh: connection floods and RSS sampling, standard library only.

  flood.py connections HOST:PORT COUNT MODE HOLD --pid PID
      Opens COUNT client connections to HOST:PORT (in batches, so the listen backlog never
      overflows), holds them HOLD seconds while sampling PID's RSS, closes them all and prints
      `opened=N peak_kib=K`. MODE `silent` connects and sends nothing; `idle` sends one
      keep-alive `GET /small` on each, reads the whole answer, then leaves the connection idle.

  flood.py peak PID SECONDS
      Samples PID's RSS every 100 ms for SECONDS and prints the largest, in KiB.

  flood.py rss PID
      Prints PID's RSS now, in KiB.

  flood.py ready URL
      Waits (up to 30 s) until URL answers 200.

Every loop here is bounded in count and time, and only loopback addresses are meant as targets.
"""

import argparse
import asyncio
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def sample_peak(pid, stop):
    peak = rss_kib(pid)
    while not stop.is_set():
        peak = max(peak, rss_kib(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    return max(peak, rss_kib(pid))


async def open_one(host, port, mode):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    if mode == "idle":
        writer.write(f"GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
        await asyncio.wait_for(reader.readexactly(length), 10)
    return writer


async def connections(args):
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(args.pid, stop))
    writers, failures = [], 0
    deadline = time.monotonic() + 120
    for start in range(0, args.count, args.batch):
        if time.monotonic() > deadline:
            print("flood.py: gave up opening connections after 120 s", file=sys.stderr)
            break
        batch = range(start, min(start + args.batch, args.count))
        results = await asyncio.gather(
            *(open_one(host, port, args.mode) for _ in batch), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                failures += 1
                if failures <= 3:
                    print(f"flood.py: a connection failed: {result!r}", file=sys.stderr)
            else:
                writers.append(result)
    await asyncio.sleep(args.hold)
    stop.set()
    peak = await sampler
    for writer in writers:
        writer.transport.abort()
    print(f"opened={len(writers)} failed={failures} peak_kib={peak}")


async def peak(args):
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(args.pid, stop))
    await asyncio.sleep(args.seconds)
    stop.set()
    print(await sampler)


def ready(url):
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"flood.py: {url} never answered 200")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    flood = commands.add_parser("connections")
    flood.add_argument("target")
    flood.add_argument("count", type=int)
    flood.add_argument("mode", choices=["silent", "idle"])
    flood.add_argument("hold", type=float)
    flood.add_argument("--pid", type=int, required=True)
    flood.add_argument("--batch", type=int, default=500)
    sampler = commands.add_parser("peak")
    sampler.add_argument("pid", type=int)
    sampler.add_argument("seconds", type=float)
    now = commands.add_parser("rss")
    now.add_argument("pid", type=int)
    waiter = commands.add_parser("ready")
    waiter.add_argument("url")
    args = parser.parse_args()
    if args.command == "connections":
        asyncio.run(connections(args))
    elif args.command == "peak":
        asyncio.run(peak(args))
    elif args.command == "ready":
        ready(args.url)
    else:
        print(rss_kib(args.pid))


if __name__ == "__main__":
    main()

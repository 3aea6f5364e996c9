"""Idle-connection opener for the gateway benchmark: opens many connections, sends one valid
minute packet on each (so the gateway binds an MN and stores it), waits for its 9014, then keeps
the sockets open and silent until stdin closes.

    python -m bench.idle --target 127.0.0.1:9212 --connections 5000 --first-index 0

Prints one JSON line (`{"open": n, "acked": n, "errors": n}`) once every connection is set up.
Run several of these to stay under the per-process file limit; the parent raises RLIMIT_NOFILE.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

from bench.loadgen import frame_of, minute_segment, mn_for


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _one(host: str, port: int, index: int, run_id: int, kept: list[asyncio.StreamWriter]) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    kept.append(writer)
    writer.write(frame_of(minute_segment(mn_for(index, run_id), 0)))
    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
    return b"CN=9014" in line


async def run(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    kept: list[asyncio.StreamWriter] = []
    acked = errors = 0
    started = time.monotonic()
    for chunk in range(0, args.connections, args.batch):
        count = min(args.batch, args.connections - chunk)
        results = await asyncio.gather(
            *(_one(host, int(port), args.first_index + chunk + i, args.run_id, kept) for i in range(count)),
            return_exceptions=True,
        )
        acked += sum(1 for r in results if r is True)
        errors += sum(1 for r in results if r is not True)
    print(json.dumps({"open": len(kept), "acked": acked, "errors": errors, "setup_s": time.monotonic() - started}))
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for writer in kept:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:9212")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--run-id", type=int, default=int(time.time()) & 0xFFFFFF)
    parser.add_argument("--batch", type=int, default=500, help="connections set up concurrently")
    args = parser.parse_args()
    raise_fd_limit()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

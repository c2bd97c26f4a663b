#!/usr/bin/python3
# Follows a job's events over a WebSocket with an independent client
# (Debian's python3-websockets): prints each message on a line, then
# "CLOSE <code>" once the server closed the connection.
#   ws_follow.py URL [Header: value ...]
import asyncio
import sys

import websockets


async def follow(url, headers):
    async with websockets.connect(url, extra_headers=headers,
                                  ping_interval=None, max_size=1 << 24,
                                  open_timeout=10) as ws:
        try:
            async for message in ws:
                print(message, flush=True)
        except websockets.ConnectionClosed:
            pass
        print("CLOSE", ws.close_code, flush=True)


def main():
    headers = [tuple(h.split(": ", 1)) for h in sys.argv[2:]]
    asyncio.run(asyncio.wait_for(follow(sys.argv[1], headers), 60))


if __name__ == "__main__":
    main()

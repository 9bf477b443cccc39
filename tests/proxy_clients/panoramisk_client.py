"""An AMI tool built on panoramisk (as published on PyPI), logged in to the
callhook AMI proxy. Driven by tests/e2e_ami_proxy.rs: it prints one JSON
object per line (ready, event, list, pong, refused, bye) and obeys the
commands it reads on stdin (list, ping, forbidden, quit)."""

import asyncio
import json
import os
import sys

from panoramisk import Manager


def out(obj):
    print(json.dumps(obj), flush=True)


async def main():
    loop = asyncio.get_running_loop()
    logged_in = loop.create_future()

    def on_login(_manager):
        if not logged_in.done():
            logged_in.set_result(True)

    manager = Manager(
        loop=loop,
        host="127.0.0.1",
        port=int(os.environ["PX_PORT"]),
        username=os.environ["PX_USER"],
        secret=os.environ["PX_SECRET"],
        ping_delay=3600,
        ping_interval=3600,
        reconnect_timeout=3600,
        on_login=on_login,
    )
    manager.register_event("*", lambda _m, ev: out({"event": dict(ev)}))
    await manager.connect()
    await asyncio.wait_for(logged_in, 30)
    out({"ready": True})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "list":
            # Two lists at once on the one connection, each its own.
            a, b = await asyncio.gather(
                manager.send_action({"Action": "CoreShowChannels"}),
                manager.send_action({"Action": "CoreShowChannels"}),
            )
            for r in (a, b):
                out({"list": [dict(m) for m in (r if isinstance(r, list) else [r])]})
        elif line == "ping":
            r = await manager.send_action({"Action": "Ping"})
            out({"pong": dict(r)})
        elif line == "forbidden":
            r = await manager.send_action({"Action": "Command", "Command": "core show channels"})
            out({"refused": dict(r)})
        else:
            r = await manager.send_action({"Action": "Logoff"})
            out({"bye": dict(r)})
            break
    manager.close()


asyncio.run(main())

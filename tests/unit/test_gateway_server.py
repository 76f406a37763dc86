"""The gateway's listening socket: what asyncio makes of the connections it accepts."""

from __future__ import annotations

import asyncio
import socket

from detserve.gateway.listener import bind


def test_accepted_connections_send_without_waiting_for_an_ack() -> None:
    """Without TCP_NODELAY, a keep-alive client waited 40 ms (its delayed ACK) for every answer
    after the first: the gateway's p50 was twice the bare server's."""
    listener = bind("127.0.0.1", 0)
    port = listener.getsockname()[1]
    nodelay: list[int] = []

    class Recorder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Recorder, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    assert len(nodelay) == 1
    assert nodelay[0] != 0

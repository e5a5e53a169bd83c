"""A trivial HTTP/1.1 server for the load generator's ceiling: every request on a keep-alive
connection gets the same small 200 answer, with no framework, routing or parsing beyond finding the
end of the request head. What a benchmark measures against it is the generator's own cost (and the
loopback's), the most any server could be seen to do from that generator on this machine.

    python bench/_trivial_http.py PORT
"""

from __future__ import annotations

import asyncio
import sys

ANSWER = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'


class Answering(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        # GET requests only: no body follows the head.
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            self.transport.write(ANSWER)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

"""A tiny authoritative DNS server for namespace tests: `python dns_upstream.py HOST PORT`.

Run in the resource namespace as the gateway's upstream. Answers A/AAAA from ZONE over UDP
and TCP (NXDOMAIN for other names, none at all for names under `silent.test`: a slow or
hostile zone), prints "ready" once both sockets listen, runs until killed. Nothing here is
the code under test.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE: dict[str, dict[str, str]] = {
    "app.corp.test.": {"A": "10.88.0.2"},  # an IPv4-only host: the resource namespace
    "v6only.corp.test.": {"AAAA": "fd00:88::2"},  # the same namespace, by IPv6 only
    "www.corp.test.": {"A": "192.0.2.7", "AAAA": "2001:db8::7"},
}


def answer(wire: bytes) -> bytes | None:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    if str(question.name).lower().endswith(".silent.test."):
        return None
    records = ZONE.get(str(question.name).lower())
    if records is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    else:
        kind = dns.rdatatype.to_text(question.rdtype)
        if kind in records:
            response.answer.append(
                dns.rrset.from_text(question.name, 30, "IN", kind, records[kind])
            )
    return response.to_wire()


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = int.from_bytes(await reader.readexactly(2), "big")
    reply = answer(await reader.readexactly(size))
    if reply is not None:
        writer.write(len(reply).to_bytes(2, "big") + reply)
        await writer.drain()
    writer.close()


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
    server = await asyncio.start_server(tcp, host, port)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

"""Internet checksum (RFC 1071) from scratch, and updated incrementally (RFC 1624 eqn. 3).

Both work modulo 0xFFFF: the ones' complement sum of the 16-bit words of a byte string equals
the string read as one big-endian integer modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), with the
end-around-carry result 0xFFFF in place of 0 for any non-zero data. So a whole packet is summed
by one `int.from_bytes` and one `%` in C, and an incremental update takes the old and the new
value of a field as integers of any width (an IPv6 address is one 128-bit int), provided the
field starts at an even offset of the summed data (true for addresses, ports, echo id/sequence).

Results are the values a from-scratch RFC 1071 computation gives (never 0xFFFF unless all data
is zero), so an incrementally updated checksum is byte-identical to a recomputed one. An update
cannot tell all-zero data (checksum 0xFFFF) from other data summing to 0xFFFF (checksum 0).
Only an ICMPv4 message, which has no pseudo-header, can be all zero: `update_field` looks at
its bytes when told where it starts; callers of `update` on ICMPv4 check it themselves.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

_MOD = 0xFFFF
_FIELD = struct.Struct("!H")

Buffer: TypeAlias = bytes | bytearray | memoryview


def ones_sum(data: Buffer) -> int:
    """Unfolded sum of `data` as 16-bit words (odd length padded with a zero byte): add sums
    of several parts with `+`, then `finish` the total."""
    value = int.from_bytes(data)
    return value << 8 if len(data) & 1 else value


def finish(total: int) -> int:
    """Checksum field value for an unfolded sum (the complement of its folded value)."""
    folded = total % _MOD
    if folded == 0 and total:  # end-around carry never yields 0 for non-zero data
        folded = _MOD
    return _MOD - folded


def internet_checksum(data: Buffer) -> int:
    """RFC 1071 checksum of `data` (whose checksum field must be zero)."""
    return finish(ones_sum(data))


def pseudo_header_sum(source: int, destination: int, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 (RFC 793/768) or IPv6 (RFC 8200 8.1) pseudo-header: the
    addresses as integers, the upper-layer length and the protocol number."""
    return source + destination + protocol + length


def update(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a field changed from `old` to `new`.

    A folded sum of 0 stands for 0xFFFF and the result is 0..0xFFFE, as `internet_checksum`
    computes it afresh for data that is not all zero: true of an IP header (its version) and
    of data under a pseudo-header (its protocol), not of an ICMPv4 message (see the module).
    """
    folded = (_MOD - checksum + new - old) % _MOD
    return _MOD - folded if folded else 0


def update_field(  # noqa: PLR0913 - the ICMPv4 case needs where its message starts
    buf: memoryview, at: int, old: int, new: int, udp: bool, *, message: int = -1
) -> None:
    """`update` applied to the checksum field at `buf[at:at + 2]` (one call per field on the
    per-packet path). For UDP (`udp`), 0 means no checksum was computed (RFC 768) and stays
    0, and a computed 0 is written as 0xFFFF. `message` >= 0: the checksum covers
    `buf[message:]` and no pseudo-header (ICMPv4), so a 0 result is 0xFFFF if those bytes
    are all zero. (A first fragment shows only its part; 0xFFFF is valid whatever the rest,
    as 0 and 0xFFFF are both ones' complement zero to a receiver.)"""
    current: int = _FIELD.unpack_from(buf, at)[0]
    if udp and not current:
        return
    folded = (_MOD - current + new - old) % _MOD
    value = _MOD - folded if folded else 0
    _FIELD.pack_into(buf, at, value or _MOD if udp else value)
    # The field now holds 0, so the test covers the message as it is summed afresh.
    if not value and message >= 0 and not int.from_bytes(buf[message:]):
        _FIELD.pack_into(buf, at, _MOD)

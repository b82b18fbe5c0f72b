//! The UDP process's receive side: datagrams off the socket (one `recvmsg` may return a
//! `UDP_GRO` super-datagram, cut here at its segment size) framed straight into the ring to
//! the crypto process, as `UdpIo.recv_batch` + `udpproc.frame_received` do in Python: the
//! endpoint header (framing.py) with the sender and the local address from
//! `IPV6_PKTINFO`/`IP_PKTINFO`. A datagram over `max_payload` is counted and dropped; a
//! handshake message (for the gate) or one longer than a slot (for `Ring.send_many`, which
//! spans slots) stops the batch and goes back to Python whole, the rest of a super-datagram
//! waiting here for the next call, so order holds.
//!
//! `split`/`frame` are pure; `recv_into` makes the one system call.

use crate::ring::Writer;
use crate::udp::HEADER_SIZE;

/// udp_io.RECV_BUFFER_BYTES: one GRO read holds up to 64 KiB of payload.
pub const RECV_BUFFER_BYTES: usize = 65536;
const UDP_GRO: libc::c_int = 104;
/// Message types 1-3 (initiation, response, cookie reply): gateway.wireguard.constants.
const HANDSHAKE_MESSAGES: [u8; 3] = [1, 2, 3];
const V4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// What one call did, for UdpIo's and the process's counters.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct RecvStats {
    /// Datagrams handed out (framed, dropped too big, or returned as a handshake).
    pub datagrams: usize,
    pub framed: usize,
    pub framed_bytes: usize,
    pub too_big: usize,
    pub syscalls: usize,
    pub coalesced_reads: usize,
    pub errors: usize,
}

/// One read's worth: the buffer, its length, its segment size and the header of its sender.
pub struct Receiver {
    buf: Vec<u8>,
    len: usize,
    at: usize,
    segment: usize,
    header: [u8; HEADER_SIZE],
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            buf: vec![0; RECV_BUFFER_BYTES],
            len: 0,
            at: 0,
            segment: 0,
            header: [0; HEADER_SIZE],
        }
    }
}

/// Why a batch ended.
pub enum Stop {
    /// The limit, or nothing more to read.
    Done,
    /// A message (header + datagram) for Python: a handshake for its gate, or one longer
    /// than a slot.
    Python(Vec<u8>),
    /// A read failed with this errno (not a one-shot ICMP report).
    Error(i32),
}

/// The header framing.py writes for a sender (family 4: IPv4 or v4-mapped) and the local
/// address it arrived at (zero: unknown).
pub fn frame(remote: &[u8; 16], port: u16, local: &[u8; 16]) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[2..4].copy_from_slice(&port.to_be_bytes());
    if remote[..12] == V4_MAPPED {
        h[0] = 4;
        h[4..8].copy_from_slice(&remote[12..]);
        // An IPv4 datagram arrives at an IPv4 address (v4-mapped on a dual-stack socket).
        let l = if local[..12] == V4_MAPPED {
            &local[12..]
        } else {
            &local[..4]
        };
        h[20..24].copy_from_slice(l);
    } else {
        h[0] = 6;
        h[4..20].copy_from_slice(remote);
        h[20..36].copy_from_slice(local);
    }
    h
}

/// The next datagram of a read of `len` bytes cut at `segment` (0: not coalesced), from
/// `at`: its range, or None when the read is used up (`udp_io.split_gro`).
pub fn split(len: usize, segment: usize, at: usize) -> Option<(usize, usize)> {
    if at >= len {
        return None;
    }
    let end = if segment == 0 {
        len
    } else {
        len.min(at.saturating_add(segment))
    };
    Some((at, end))
}

/// A system call's answer: (bytes, sender address, port, local address, GRO segment size).
pub type Read = Result<(usize, [u8; 16], u16, [u8; 16], usize), i32>;

impl Receiver {
    /// Up to `limit` datagrams framed into `writer` (one slot each; the caller leaves that
    /// much room), using `read` for each system call; each datagram longer than
    /// `max_payload` is dropped and counted.
    pub fn receive(
        &mut self,
        read: &mut dyn FnMut(&mut [u8]) -> Read,
        writer: &mut Writer<'_, '_>,
        limit: usize,
        max_payload: usize,
        stats: &mut RecvStats,
    ) -> Stop {
        while stats.datagrams < limit {
            let Some((start, end)) = split(self.len, self.segment, self.at) else {
                match read(&mut self.buf) {
                    Ok((n, remote, port, local, segment)) => {
                        stats.syscalls += 1;
                        self.len = n.min(self.buf.len());
                        self.at = 0;
                        self.segment = segment;
                        self.header = frame(&remote, port, &local);
                        if segment > 0 && self.len > segment {
                            stats.coalesced_reads += 1;
                        }
                        if self.len == 0 {
                            // An empty datagram is one datagram (split_gro returns it).
                            stats.datagrams += 1;
                            if self.deliver(0, 0, writer, max_payload, stats).is_some() {
                                return Stop::Python(self.header.to_vec());
                            }
                        }
                        continue;
                    }
                    Err(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK || e == libc::EINTR => {
                        return Stop::Done
                    }
                    Err(e) if one_shot(e) => {
                        stats.errors += 1;
                        continue;
                    }
                    Err(e) => return Stop::Error(e),
                }
            };
            self.at = end;
            stats.datagrams += 1;
            if let Some(message) = self.deliver(start, end, writer, max_payload, stats) {
                return Stop::Python(message);
            }
        }
        Stop::Done
    }

    /// Frame buf[start..end] into a slot; a message for Python comes back instead.
    fn deliver(
        &self,
        start: usize,
        end: usize,
        writer: &mut Writer<'_, '_>,
        max_payload: usize,
        stats: &mut RecvStats,
    ) -> Option<Vec<u8>> {
        let data = self.buf.get(start..end)?;
        if data.len() > max_payload {
            stats.too_big += 1;
            return None;
        }
        let total = HEADER_SIZE + data.len();
        if !data.first().is_some_and(|t| HANDSHAKE_MESSAGES.contains(t)) {
            if let Some(slot) = writer.reserve() {
                if let Some(dest) = slot.get_mut(..total) {
                    dest[..HEADER_SIZE].copy_from_slice(&self.header);
                    dest[HEADER_SIZE..].copy_from_slice(data);
                    writer.commit(total);
                    stats.framed += 1;
                    stats.framed_bytes += data.len();
                    return None;
                }
            }
        }
        // A handshake, one longer than a slot, or no slot free (the caller's limit said
        // there would be): Python's Ring.send_many takes it, or counts it as ring full.
        let mut message = self.header.to_vec();
        message.extend_from_slice(data);
        Some(message)
    }
}

/// ICMP errors a read reports once (udp_io._ONE_SHOT_RX_ERRORS): skipped.
fn one_shot(errno: i32) -> bool {
    [
        libc::ECONNREFUSED,
        libc::EHOSTUNREACH,
        libc::ENETUNREACH,
        libc::EHOSTDOWN,
        libc::ENETDOWN,
    ]
    .contains(&errno)
}

/// One non-blocking `recvmsg` on `fd` into `buf`, with its GRO and PKTINFO messages.
pub fn recv_into(fd: libc::c_int, buf: &mut [u8]) -> Read {
    // SAFETY: all-zero bytes are a valid sockaddr_storage (a plain C struct).
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16]; // 128 bytes, 8-aligned: GRO (24) + in6_pktinfo (40)
                                  // SAFETY: all-zero bytes are a valid msghdr (a plain C struct; null pointers, 0 sizes).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg's name, iovec and control point at live buffers of the sizes given; the
    // kernel writes at most those. fd is the caller's open socket.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let (mut segment, mut local) = (0usize, [0u8; 16]);
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk only the controllen bytes the kernel filled in, and
    // each data read below is checked against the message's own cmsg_len first.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let size = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            // `size` is what the kernel wrote after this header, inside `control`.
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_UDP, UDP_GRO) if size >= 4 => {
                    segment = (data as *const i32).read_unaligned().max(0) as usize;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if size >= 20 => {
                    std::ptr::copy_nonoverlapping(data, local.as_mut_ptr(), 16);
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if size >= 12 => {
                    // ipi_spec_dst: the local address (ipi_addr is the header's).
                    local[..12].copy_from_slice(&V4_MAPPED);
                    std::ptr::copy_nonoverlapping(data.add(4), local.as_mut_ptr().add(12), 4);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let (remote, port) = match i32::from(addr.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family says so) into the storage.
            let a = unsafe { *(&addr as *const _ as *const libc::sockaddr_in6) };
            (a.sin6_addr.s6_addr, u16::from_be(a.sin6_port))
        }
        libc::AF_INET => {
            // SAFETY: as above, a sockaddr_in.
            let a = unsafe { *(&addr as *const _ as *const libc::sockaddr_in) };
            let mut r = [0u8; 16];
            r[..12].copy_from_slice(&V4_MAPPED);
            r[12..].copy_from_slice(&a.sin_addr.s_addr.to_ne_bytes());
            (r, u16::from_be(a.sin_port))
        }
        _ => ([0u8; 16], 0),
    };
    Ok((n as usize, remote, port, local, segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::Owned;
    use crate::ring::{Next, RingMem};
    use crate::udp::parse_message;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..12].copy_from_slice(&V4_MAPPED);
        r[12..].copy_from_slice(&a);
        r
    }

    fn drain(ring: &RingMem<'_>) -> Vec<Vec<u8>> {
        let mut reader = ring.reader();
        let mut out = Vec::new();
        while let Next::Message(m) = reader.peek() {
            out.push(m.to_vec());
            reader.take();
        }
        reader.release();
        out
    }

    #[test]
    fn a_gro_read_is_cut_framed_and_stops_at_a_handshake() {
        let mut owned = Owned::new(64, 1400).unwrap();
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        // Reads: 3 coalesced 100-byte transport messages and a 40-byte tail, then a
        // handshake initiation, then one too big, then nothing.
        let mut reads: Vec<Vec<u8>> = vec![
            [vec![4u8; 300], vec![4u8; 40]].concat(),
            vec![1u8; 148],
            vec![4u8; 1300],
        ];
        let mut read = |buf: &mut [u8]| -> Read {
            if reads.is_empty() {
                return Err(libc::EAGAIN);
            }
            let data = reads.remove(0);
            buf[..data.len()].copy_from_slice(&data);
            let segment = if data.len() == 340 { 100 } else { 0 };
            Ok((
                data.len(),
                v4([192, 0, 2, 7]),
                51820,
                v4([10, 0, 0, 2]),
                segment,
            ))
        };
        let mut rx = Receiver::default();
        let mut stats = RecvStats::default();
        let mut w = ring.writer();
        let stop = rx.receive(&mut read, &mut w, 100, 1200, &mut stats);
        w.publish();
        let Stop::Python(message) = stop else {
            panic!("a handshake stop expected")
        };
        let (dest, data) = parse_message(&message).unwrap();
        assert_eq!(
            (dest.v6, dest.port, &dest.remote[..4]),
            (false, 51820, &[192, 0, 2, 7][..])
        );
        assert_eq!(&dest.local[..4], &[10, 0, 0, 2]);
        assert_eq!(data.len(), 148);
        let framed = drain(&ring);
        let lens: Vec<usize> = framed.iter().map(|m| m.len() - HEADER_SIZE).collect();
        assert_eq!(lens, vec![100, 100, 100, 40]);
        assert_eq!(
            (stats.datagrams, stats.coalesced_reads, stats.syscalls),
            (5, 1, 2)
        );
        let mut w = ring.writer();
        let stop = rx.receive(&mut read, &mut w, 100, 1200, &mut stats);
        w.publish();
        assert!(matches!(stop, Stop::Done));
        assert_eq!(
            (stats.too_big, stats.framed, stats.framed_bytes),
            (1, 4, 340)
        );
    }

    #[test]
    fn the_limit_leaves_the_rest_of_a_read_for_the_next_call() {
        let mut owned = Owned::new(64, 1400).unwrap();
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        let mut once = true;
        let mut read = |buf: &mut [u8]| -> Read {
            if !std::mem::take(&mut once) {
                return Err(libc::EAGAIN);
            }
            buf[..500].fill(4);
            Ok((500, [0x20; 16], 9, [0; 16], 100))
        };
        let mut rx = Receiver::default();
        let mut stats = RecvStats::default();
        let mut w = ring.writer();
        rx.receive(&mut read, &mut w, 2, 1200, &mut stats);
        w.publish();
        assert_eq!(drain(&ring).len(), 2);
        let mut w = ring.writer();
        rx.receive(&mut read, &mut w, 100, 1200, &mut stats);
        w.publish();
        let rest = drain(&ring);
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0][0], 6);
        assert!(split(500, 100, 500).is_none());
        assert_eq!(split(10, 0, 0), Some((0, 10)));
    }
}

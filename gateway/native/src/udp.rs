//! The UDP process's send side: a batch of the crypto ring's messages (endpoint header +
//! datagram, `gateway/dataplane/framing.py`) onto the socket as GSO sends, the way
//! `gateway/udp_io.py` does it in Python: consecutive datagrams to one endpoint from one
//! source address, all of the first one's size but a shorter last, go in one `sendmsg` with
//! `UDP_SEGMENT`; a sticky endpoint's local address goes in an `IP_PKTINFO`/`IPV6_PKTINFO`
//! control message (sent again without it when the kernel refuses that source). The
//! datagrams go from the ring slots themselves (no copy); what a full socket buffer did not
//! take comes back as whole messages for the caller to keep (`UdpLoop.unsent`).
//!
//! Parsing and planning are pure (`parse_message`, `plan`); `Socket` is the only place that
//! makes system calls, behind the `Sender` trait so tests and fuzzing use a fake.

use crate::ring::{Next, RingMem};

/// framing.py's HEADER_SIZE: family, pad, port, remote (16), local (16).
pub const HEADER_SIZE: usize = 36;
const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;
/// The kernel's UDP_MAX_SEGMENTS (udp_io.GSO_MAX_SEGMENTS).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// udp_io.GSO_MAX_BYTES: 64 KiB of IP packet minus the IPv6 and UDP headers.
pub const GSO_MAX_BYTES: usize = 65535 - 40 - 8;
const UDP_SEGMENT: libc::c_int = 103;

/// Where a datagram goes: framing.py's header, normalised (an IPv4 address in the first 4
/// bytes, the rest zero), so equal endpoints compare equal whatever padding a writer left.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Dest {
    pub v6: bool,
    pub port: u16,
    pub remote: [u8; 16],
    /// The source to send from; all zero: none (the kernel chooses).
    pub local: [u8; 16],
}

impl Dest {
    pub fn sticky(&self) -> bool {
        self.local.iter().any(|&b| b != 0)
    }
}

/// A ring message's destination and datagram, or None where framing.py raises
/// FramingError (too short, unknown family).
pub fn parse_message(message: &[u8]) -> Option<(Dest, &[u8])> {
    let header = message.get(..HEADER_SIZE)?;
    let datagram = message.get(HEADER_SIZE..)?;
    let width = match header[0] {
        FAMILY_IPV4 => 4,
        FAMILY_IPV6 => 16,
        _ => return None,
    };
    let mut dest = Dest {
        v6: width == 16,
        port: u16::from_be_bytes([header[2], header[3]]),
        remote: [0; 16],
        local: [0; 16],
    };
    dest.remote[..width].copy_from_slice(&header[4..4 + width]);
    dest.local[..width].copy_from_slice(&header[20..20 + width]);
    Some((dest, datagram))
}

/// A run of items (indices `start..end`) to one destination, `segment` bytes each but the
/// last: `plan_gso_batches` in udp_io.py.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Batch {
    pub start: usize,
    pub end: usize,
    pub segment: usize,
}

/// Group datagrams into GSO batches, keeping their order (`udp_io.plan_gso_batches`); with
/// `gso` off, one batch per datagram.
pub fn plan(items: &[(Dest, &[u8])], gso: bool) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut total = 0usize;
    let mut closed = true;
    for (i, (dest, data)) in items.iter().enumerate() {
        let size = data.len();
        if let Some(current) = batches.last_mut() {
            if gso
                && !closed
                && *dest == items[current.start].0
                && 0 < size
                && size <= current.segment
                && current.end - current.start < GSO_MAX_SEGMENTS
                && total + size <= GSO_MAX_BYTES
            {
                current.end = i + 1;
                total += size;
                closed = size < current.segment;
                continue;
            }
        }
        batches.push(Batch {
            start: i,
            end: i + 1,
            segment: size,
        });
        total = size;
        // An empty or oversized datagram cannot be a GSO segment: never extend its batch.
        closed = size == 0 || size > GSO_MAX_BYTES;
    }
    batches
}

/// One `sendmsg`: datagrams to `dest`, as GSO segments of `segment` bytes when given, from
/// `dest.local` when `with_source`. Err is the errno.
pub trait Sender {
    fn send(
        &mut self,
        dest: &Dest,
        datagrams: &[&[u8]],
        segment: Option<u16>,
        with_source: bool,
    ) -> Result<(), i32>;
}

/// What one call did: `udp_io.SendStats` and the `UdpCounters` it moves.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct SendStats {
    /// Ring messages taken (released), malformed ones included.
    pub taken: usize,
    pub malformed: usize,
    /// Items (well-formed messages) handled: sent or dropped.
    pub consumed: usize,
    pub sent: usize,
    pub dropped: usize,
    pub syscalls: usize,
    pub gso_batches: usize,
    pub gso_datagrams: usize,
    pub source_fallbacks: usize,
    pub gso_oversize: usize,
    pub gso_fallbacks: usize,
    /// Datagram bytes of the consumed items.
    pub bytes: usize,
    pub blocked: bool,
    /// The message after the last one taken is one native code does not read.
    pub foreign: bool,
}

fn would_block(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EWOULDBLOCK || errno == libc::EINTR
}

fn source_refused(errno: i32) -> bool {
    errno == libc::EINVAL || errno == libc::ENETUNREACH || errno == libc::EADDRNOTAVAIL
}

/// `UdpIo._sendmsg`: from the sticky source, once more without it if the kernel refuses it.
fn send_from_source<S: Sender>(
    sock: &mut S,
    dest: &Dest,
    datagrams: &[&[u8]],
    segment: Option<u16>,
    stats: &mut SendStats,
) -> Result<(), i32> {
    if dest.sticky() {
        stats.syscalls += 1;
        match sock.send(dest, datagrams, segment, true) {
            Ok(()) => return Ok(()),
            Err(e) if !source_refused(e) => return Err(e),
            Err(_) => {}
        }
        stats.syscalls += 1;
        sock.send(dest, datagrams, segment, false)?;
        stats.source_fallbacks += 1;
        return Ok(());
    }
    stats.syscalls += 1;
    sock.send(dest, datagrams, segment, false)
}

/// Send `items` in order (`UdpIo.send_batch`); stops at a full socket buffer (`blocked`,
/// items[consumed..] untried). `gso` is cleared when the kernel refuses segmentation.
pub fn send_items<S: Sender>(
    sock: &mut S,
    items: &[(Dest, &[u8])],
    gso: &mut bool,
    v6_socket: bool,
    stats: &mut SendStats,
) {
    let mut iov: Vec<&[u8]> = Vec::with_capacity(GSO_MAX_SEGMENTS);
    for batch in plan(items, *gso) {
        let dest = &items[batch.start].0;
        let count = batch.end - batch.start;
        // sockaddr_for's ValueError (port 0), or an IPv6 peer on an IPv4-only socket.
        if dest.port == 0 || (dest.v6 && !v6_socket) {
            stats.dropped += count;
            stats.consumed += count;
            continue;
        }
        iov.clear();
        iov.extend(items[batch.start..batch.end].iter().map(|(_, d)| *d));
        let mut singly = true;
        if count > 1 && *gso {
            // plan() keeps segments within GSO_MAX_BYTES, so the size fits a u16.
            let segment = u16::try_from(batch.segment).unwrap_or(u16::MAX);
            match send_from_source(sock, dest, &iov, Some(segment), stats) {
                Ok(()) => {
                    stats.sent += count;
                    stats.consumed += count;
                    stats.gso_batches += 1;
                    stats.gso_datagrams += count;
                    singly = false;
                }
                Err(e) if would_block(e) => {
                    stats.blocked = true;
                    return;
                }
                Err(libc::EMSGSIZE) => stats.gso_oversize += 1,
                Err(e) if e == libc::EIO || e == libc::EINVAL => {
                    *gso = false;
                    stats.gso_fallbacks += 1;
                }
                Err(_) => {
                    stats.dropped += count;
                    stats.consumed += count;
                    singly = false;
                }
            }
        }
        if singly {
            for data in &iov {
                match send_from_source(sock, dest, &[data], None, stats) {
                    Ok(()) => stats.sent += 1,
                    Err(e) if would_block(e) => {
                        stats.blocked = true;
                        return;
                    }
                    Err(_) => stats.dropped += 1,
                }
                stats.consumed += 1;
            }
        }
    }
}

/// Up to `limit` messages of `ring` onto `sock` (`UdpLoop._send_from_crypto`): malformed
/// ones counted, the rest sent; every message read is released, and those a full socket
/// did not take are appended to `unsent` whole (header + datagram), in order.
pub fn send_from_ring<S: Sender>(
    sock: &mut S,
    ring: &RingMem<'_>,
    limit: usize,
    gso: &mut bool,
    v6_socket: bool,
    unsent: &mut Vec<Vec<u8>>,
) -> SendStats {
    let mut stats = SendStats::default();
    let mut reader = ring.reader();
    let mut messages: Vec<&[u8]> = Vec::new();
    while messages.len() + stats.malformed < limit {
        match reader.peek() {
            Next::Message(m) => {
                reader.take();
                if parse_message(m).is_some() {
                    messages.push(m);
                } else {
                    stats.malformed += 1;
                }
            }
            Next::Foreign => {
                stats.foreign = true;
                break;
            }
            Next::Empty => break,
        }
    }
    stats.taken = messages.len() + stats.malformed;
    let items: Vec<(Dest, &[u8])> = messages.iter().filter_map(|m| parse_message(m)).collect();
    send_items(sock, &items, gso, v6_socket, &mut stats);
    stats.bytes = items
        .iter()
        .take(stats.consumed)
        .map(|(_, d)| d.len())
        .sum();
    if stats.blocked {
        unsent.extend(messages[stats.consumed..].iter().map(|m| m.to_vec()));
    }
    reader.release(); // after the last read of the slots (sent, or copied to unsent)
    stats
}

/// The process's UDP socket by its descriptor (owned by Python's `UdpIo`).
pub struct Socket {
    pub fd: libc::c_int,
    pub v6: bool,
}

impl Sender for Socket {
    fn send(
        &mut self,
        dest: &Dest,
        datagrams: &[&[u8]],
        segment: Option<u16>,
        with_source: bool,
    ) -> Result<(), i32> {
        // SAFETY: all-zero bytes are a valid sockaddr_in6 (a plain C struct).
        let mut addr6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero bytes are a valid sockaddr_in (a plain C struct).
        let mut addr4: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let (name, namelen) = if self.v6 {
            addr6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addr6.sin6_port = dest.port.to_be();
            addr6.sin6_addr.s6_addr = mapped(dest.v6, &dest.remote);
            (
                &mut addr6 as *mut _ as *mut libc::c_void,
                std::mem::size_of::<libc::sockaddr_in6>(),
            )
        } else {
            addr4.sin_family = libc::AF_INET as libc::sa_family_t;
            addr4.sin_port = dest.port.to_be();
            addr4.sin_addr.s_addr = u32::from_ne_bytes([
                dest.remote[0],
                dest.remote[1],
                dest.remote[2],
                dest.remote[3],
            ]);
            (
                &mut addr4 as *mut _ as *mut libc::c_void,
                std::mem::size_of::<libc::sockaddr_in>(),
            )
        };
        let iov: Vec<libc::iovec> = datagrams
            .iter()
            .map(|d| libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            })
            .collect();
        // u64 words keep the control buffer aligned for cmsghdr; 64 bytes hold both messages.
        let mut control = [0u64; 8];
        let mut used = 0usize;
        let base = control.as_mut_ptr() as *mut u8;
        if let Some(size) = segment {
            // SAFETY: CMSG_SPACE(2) (24) fits the 64-byte buffer at offset 0, aligned.
            unsafe {
                put_cmsg(
                    base.add(used),
                    libc::SOL_UDP,
                    UDP_SEGMENT,
                    &size.to_ne_bytes(),
                )
            };
            used += cmsg_space(2);
        }
        if with_source {
            let mut info = [0u8; 20];
            let (level, kind, len) = if self.v6 {
                // struct in6_pktinfo { in6_addr addr; unsigned ifindex = 0 }.
                info[..16].copy_from_slice(&mapped(dest.v6, &dest.local));
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, 20)
            } else {
                // struct in_pktinfo { int ifindex = 0; spec_dst; addr = 0 }.
                info[4..8].copy_from_slice(&dest.local[..4]);
                (libc::IPPROTO_IP, libc::IP_PKTINFO, 12)
            };
            // SAFETY: used is 0 or 24, CMSG_SPACE(20) is 40: at most 64, inside `control`,
            // and CMSG_SPACE keeps each message 8-aligned.
            unsafe { put_cmsg(base.add(used), level, kind, &info[..len]) };
            used += cmsg_space(len);
        }
        // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = name;
        msg.msg_namelen = namelen as libc::socklen_t;
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        if used > 0 {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = used as _;
        }
        // SAFETY: msg points at a sockaddr of namelen bytes, iov.len() iovecs over live
        // slices (the ring slots, not released before this returns) and `used` bytes of
        // well-formed control messages; the kernel only reads them. fd is the caller's open
        // socket (Python's UdpIo keeps it open for the call).
        let rc = unsafe { libc::sendmsg(self.fd, &msg, libc::MSG_DONTWAIT) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }
}

/// CMSG_SPACE: the room a control message with `len` bytes of data takes.
pub(crate) fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument (no memory access).
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// An address for a dual-stack socket: IPv4 as v4-mapped IPv6.
fn mapped(v6: bool, addr: &[u8; 16]) -> [u8; 16] {
    if v6 {
        return *addr;
    }
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&addr[..4]);
    out
}

/// Write one control message at `at`.
///
/// # Safety
/// `at` must be 8-aligned with CMSG_SPACE(data.len()) writable bytes.
unsafe fn put_cmsg(at: *mut u8, level: libc::c_int, kind: libc::c_int, data: &[u8]) {
    let header = at as *mut libc::cmsghdr;
    (*header).cmsg_level = level;
    (*header).cmsg_type = kind;
    (*header).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
    std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(header), data.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::Owned;

    /// Records sends; answers with the errnos queued in `errors` first (0: success).
    type Sent = (Dest, Vec<Vec<u8>>, Option<u16>, bool);

    #[derive(Default)]
    struct Fake {
        sent: Vec<Sent>,
        errors: Vec<i32>,
    }

    impl Sender for Fake {
        fn send(&mut self, d: &Dest, g: &[&[u8]], s: Option<u16>, src: bool) -> Result<(), i32> {
            if !self.errors.is_empty() {
                let errno = self.errors.remove(0);
                if errno != 0 {
                    return Err(errno);
                }
            }
            self.sent
                .push((*d, g.iter().map(|x| x.to_vec()).collect(), s, src));
            Ok(())
        }
    }

    fn header(family: u8, port: u16, remote: &[u8], local: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[0] = family;
        h[2..4].copy_from_slice(&port.to_be_bytes());
        h[4..4 + remote.len()].copy_from_slice(remote);
        h[20..20 + local.len()].copy_from_slice(local);
        h
    }

    fn ring_with(messages: &[Vec<u8>]) -> Owned {
        let mut owned = Owned::new(16, 1280).unwrap();
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        let mut w = ring.writer();
        for m in messages {
            let slot = w.reserve().unwrap();
            slot[..m.len()].copy_from_slice(m);
            w.commit(m.len());
        }
        w.publish();
        owned
    }

    #[test]
    fn parse_normalises_ipv4_and_refuses_what_framing_refuses() {
        let mut m = header(4, 51820, &[10, 0, 0, 1, 9, 9], &[10, 0, 0, 2, 7]);
        m.push(42);
        let (d, data) = parse_message(&m).unwrap();
        assert_eq!(
            (d.v6, d.port, &d.remote[..5], &d.local[..5]),
            (false, 51820, &[10, 0, 0, 1, 0][..], &[10, 0, 0, 2, 0][..])
        );
        assert_eq!(data, &[42]);
        assert!(d.sticky());
        assert!(parse_message(&m[..35]).is_none());
        m[0] = 5;
        assert!(parse_message(&m).is_none());
    }

    #[test]
    fn batches_like_plan_gso_batches() {
        let a = parse_message(&header(4, 1, &[1, 2, 3, 4], &[])).unwrap().0;
        let b = parse_message(&header(4, 2, &[1, 2, 3, 4], &[])).unwrap().0;
        let (big, small, empty) = (vec![0u8; 100], vec![0u8; 50], vec![]);
        let items = vec![
            (a, &big[..]),
            (a, &big[..]),
            (a, &small[..]),
            (a, &small[..]),
            (b, &small[..]),
            (b, &empty[..]),
            (b, &empty[..]),
        ];
        let spans: Vec<(usize, usize)> = plan(&items, true)
            .iter()
            .map(|b| (b.start, b.end))
            .collect();
        assert_eq!(spans, vec![(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]);
        assert_eq!(plan(&items, false).len(), 7);
        let many = vec![(a, &small[..]); 130];
        let spans: Vec<usize> = plan(&many, true).iter().map(|b| b.end - b.start).collect();
        assert_eq!(spans, vec![64, 64, 2]);
    }

    #[test]
    fn sends_a_ring_batch_with_sources_and_fallbacks() {
        let mut sticky = header(
            6,
            7,
            &[0x20, 1, 0xd, 0xb8],
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        );
        sticky.extend_from_slice(&[1; 60]);
        let mut plain = header(4, 9, &[192, 0, 2, 1], &[]);
        plain.extend_from_slice(&[2; 60]);
        let msgs = vec![
            sticky.clone(),
            sticky.clone(),
            vec![9; 10],
            plain.clone(),
            header(4, 0, &[192, 0, 2, 1], &[]),
        ];
        let mut owned = ring_with(&msgs);
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        let mut fake = Fake {
            errors: vec![libc::EADDRNOTAVAIL],
            ..Fake::default()
        };
        let (mut gso, mut unsent) = (true, Vec::new());
        let s = send_from_ring(&mut fake, &ring, 100, &mut gso, true, &mut unsent);
        assert_eq!(
            (s.taken, s.malformed, s.consumed, s.sent, s.dropped),
            (5, 1, 4, 3, 1)
        );
        assert_eq!(
            (
                s.gso_batches,
                s.gso_datagrams,
                s.source_fallbacks,
                s.syscalls
            ),
            (1, 2, 1, 3)
        );
        assert_eq!(s.bytes, 180);
        assert_eq!(fake.sent[0].2, Some(60));
        assert!(!fake.sent[0].3 && !fake.sent[1].3);
        assert!(unsent.is_empty() && !s.blocked);
        assert_eq!(owned.word(crate::layout::W_RELEASED), 5);
    }

    #[test]
    fn a_full_socket_keeps_the_rest_whole_and_gso_refused_goes_singly() {
        let mut m = header(4, 9, &[192, 0, 2, 1], &[]);
        m.extend_from_slice(&[2; 60]);
        let mut owned = ring_with(&vec![m.clone(); 4]);
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        let mut fake = Fake {
            errors: vec![libc::EIO, 0, libc::EAGAIN],
            ..Fake::default()
        };
        let (mut gso, mut unsent) = (true, Vec::new());
        // GSO refused (EIO): singly; the first goes, the second finds the socket full.
        let s = send_from_ring(&mut fake, &ring, 100, &mut gso, true, &mut unsent);
        assert!(!gso && s.blocked);
        assert_eq!((s.consumed, s.sent, s.gso_fallbacks), (1, 1, 1));
        assert_eq!(unsent, vec![m.clone(); 3]);
        assert_eq!(owned.word(crate::layout::W_RELEASED), 4);
    }
}

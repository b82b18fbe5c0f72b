//! The per-packet decisions, one message at a time, and the batches over rings built on them.
//!
//! Inbound (a UDP ring message: endpoint header + datagram): a transport message of a
//! confirmed session from its peer's current endpoint is opened, checked against the replay
//! window and the peer's allowed IPs, and delivered. Anything else (handshakes, cookies,
//! unknown index, keepalives, an endpoint change, sizes a slot cannot hold) is `Punt`: the
//! batch stops before it and Python handles it, so order holds. Outbound (an IP packet from
//! a worker): destination -> peer -> the session Python allows -> sealed with its endpoint
//! header into the UDP ring's slot; no session, expired or no room -> `Punt`.

use crate::flow::flow_worker;
use crate::replay::REJECT_AFTER_MESSAGES;
use crate::ring::{Next, RingMem, Writer};
use crate::table::{
    open_into, seal_into, Activity, OpenError, Table, HEADER_SIZE, MAX_TRANSPORT, TAG,
    TRANSPORT_HEADER,
};

/// Drops counted natively, in the order `take_drops` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    DecryptFailed = 0,
    Replay = 1,
    ExpiredKeypair = 2,
    MalformedInner = 3,
    SpoofedSource = 4,
    RingFull = 5,
}
pub const DROP_KINDS: usize = 6;

#[derive(Debug, PartialEq, Eq)]
pub enum In {
    Punt,
    Drop(Drop),
    /// The inner packet is `scratch[..len]`.
    Deliver(usize),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    Punt,
    /// `len` bytes (endpoint header + transport message) are in the slot.
    Sealed(usize),
}

/// Why a batch ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stop {
    /// The source is empty or the limit was reached.
    Done = 0,
    /// The next message is Python's (left in the ring, unread).
    Punt = 1,
    /// The destination ring has no room.
    Full = 2,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// The inner packet's real length after the padding, and its source address; None when it
/// is not a whole IPv4/IPv6 packet (`Device._check_inner`).
fn inner_source(inner: &[u8]) -> Option<(usize, &[u8])> {
    let first = *inner.first()?;
    let (length, source) = match first >> 4 {
        4 if inner.len() >= 20 => (
            usize::from(u16::from_be_bytes([inner[2], inner[3]])),
            &inner[12..16],
        ),
        6 if inner.len() >= 40 => (
            40 + usize::from(u16::from_be_bytes([inner[4], inner[5]])),
            &inner[8..24],
        ),
        _ => return None,
    };
    (20..=inner.len())
        .contains(&length)
        .then_some((length, source))
}

pub struct FastPath {
    pub table: Table,
    pub drops: [u64; DROP_KINDS],
    scratch: Vec<u8>,
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath {
            table: Table::default(),
            drops: [0; DROP_KINDS],
            scratch: vec![0; MAX_TRANSPORT],
        }
    }
}

impl FastPath {
    /// The inner packet of the last `In::Deliver`.
    pub fn delivered(&self, len: usize) -> &[u8] {
        &self.scratch[..len]
    }

    /// One UDP ring message; `max_inner` is the largest inner packet the caller can deliver.
    pub fn inbound_one(&mut self, message: &[u8], now: f64, max_inner: usize) -> In {
        if message.len() < HEADER_SIZE + TRANSPORT_HEADER + TAG || !matches!(message[0], 4 | 6) {
            return In::Punt;
        }
        let (header, datagram) = message.split_at(HEADER_SIZE);
        if datagram[..4] != [4, 0, 0, 0] || datagram.len() > MAX_TRANSPORT {
            return In::Punt;
        }
        // A keepalive (nothing inside) and a packet too big to deliver are Python's.
        let body = datagram.len() - TRANSPORT_HEADER - TAG;
        if body == 0 || body > max_inner {
            return In::Punt;
        }
        let local = u32_at(datagram, 4);
        let table = &mut self.table;
        let Some(session) = table.sessions.get_mut(&local) else {
            return In::Punt;
        };
        let peer = session.peer;
        let same_endpoint = table
            .peers
            .get(&peer)
            .and_then(|p| p.endpoint.as_ref())
            .is_some_and(|e| e[..] == *header);
        if !session.confirmed || !same_endpoint {
            return In::Punt;
        }
        if session.expired(now) || u64_at(datagram, 8) >= REJECT_AFTER_MESSAGES {
            return In::Drop(Drop::ExpiredKeypair);
        }
        match open_into(session, datagram, &mut self.scratch) {
            Err(OpenError::Replay) => return In::Drop(Drop::Replay),
            Err(_) => return In::Drop(Drop::DecryptFailed),
            Ok(_) => {}
        }
        let size = datagram.len() as u64;
        table.touch(local, |a: &mut Activity| {
            a.rx_packets += 1;
            a.rx_bytes += size;
        });
        let Some((length, source)) = inner_source(&self.scratch[..body]) else {
            return In::Drop(Drop::MalformedInner);
        };
        if table.routes.lookup(source) != Some(peer) {
            return In::Drop(Drop::SpoofedSource);
        }
        In::Deliver(length)
    }

    /// One IP packet from a worker, sealed into `slot` (a UDP ring slot) with its header.
    pub fn outbound_one(&mut self, packet: &[u8], now: f64, mtu: usize, slot: &mut [u8]) -> Out {
        let size = packet.len();
        let destination = match packet.first().map(|b| b >> 4) {
            Some(4) if size >= 20 => &packet[16..20],
            Some(6) if size >= 40 => &packet[24..40],
            _ => return Out::Punt,
        };
        let table = &mut self.table;
        let Some(peer) = table.routes.lookup(destination) else {
            return Out::Punt;
        };
        let Some(state) = table.peers.get(&peer) else {
            return Out::Punt;
        };
        let (Some(endpoint), Some(local)) = (state.endpoint, state.send_index) else {
            return Out::Punt;
        };
        let Some(session) = table.sessions.get_mut(&local) else {
            return Out::Punt;
        };
        if session.expired(now)
            || session.send_counter >= REJECT_AFTER_MESSAGES
            || session.send_counter >= session.send_limit
        {
            return Out::Punt; // Python rekeys, or persists the next block of counters
        }
        let mut padded = (size + 15) & !15;
        if mtu > 0 && padded > mtu {
            padded = mtu.max(size);
        }
        let total = HEADER_SIZE + TRANSPORT_HEADER + padded + TAG;
        if total > slot.len() || padded > self.scratch.len() {
            return Out::Punt;
        }
        let plain = &mut self.scratch[..padded];
        plain[..size].copy_from_slice(packet);
        plain[size..].fill(0);
        slot[..HEADER_SIZE].copy_from_slice(&endpoint);
        let Some(sealed) = seal_into(session, plain, &mut slot[HEADER_SIZE..]) else {
            return Out::Punt;
        };
        table.touch(local, |a: &mut Activity| {
            a.tx_packets += 1;
            a.tx_bytes += sealed as u64;
        });
        Out::Sealed(HEADER_SIZE + sealed)
    }

    fn count(&mut self, drop: Drop) {
        self.drops[drop as usize] += 1;
    }

    /// Messages from `source` until `limit`, a punt or the end; each delivered packet goes
    /// to `sink`. Returns (messages taken, why it stopped).
    pub fn inbound(
        &mut self,
        source: &RingMem,
        limit: usize,
        now: f64,
        max_inner: usize,
        sink: &mut dyn FnMut(&mut Self, usize) -> bool,
    ) -> (usize, Stop) {
        let mut reader = source.reader();
        let mut taken = 0;
        let mut stop = Stop::Done;
        while taken < limit {
            let message = match reader.peek() {
                Next::Empty => break,
                Next::Foreign => {
                    stop = Stop::Punt;
                    break;
                }
                Next::Message(m) => m,
            };
            match self.inbound_one(message, now, max_inner) {
                In::Punt => {
                    stop = Stop::Punt;
                    break;
                }
                In::Drop(drop) => self.count(drop),
                In::Deliver(len) => {
                    if !sink(self, len) {
                        self.count(Drop::RingFull);
                    }
                }
            }
            reader.take();
            taken += 1;
        }
        reader.release();
        (taken, stop)
    }

    /// Inbound into the workers' rings by flow.
    pub fn inbound_to_rings(
        &mut self,
        source: &RingMem,
        workers: &mut [Writer],
        limit: usize,
        now: f64,
    ) -> (usize, Stop) {
        let max_inner = workers.iter().map(Writer::stride).min().unwrap_or(0);
        let count = workers.len();
        let (taken, stop) = self.inbound(source, limit, now, max_inner, &mut |fp, len| {
            let inner = fp.delivered(len);
            let Some(writer) = workers.get_mut(flow_worker(inner, count)) else {
                return false;
            };
            match writer.reserve() {
                Some(slot) => {
                    slot[..len].copy_from_slice(inner);
                    writer.commit(len);
                    true
                }
                None => {
                    writer.mark_full();
                    false
                }
            }
        });
        (taken, stop)
    }

    /// Packets from a worker ring sealed into the UDP ring until `limit`, a punt or no room.
    pub fn outbound(
        &mut self,
        source: &RingMem,
        dest: &mut Writer,
        limit: usize,
        now: f64,
        mtu: usize,
    ) -> (usize, Stop) {
        let mut reader = source.reader();
        let mut taken = 0;
        let mut stop = Stop::Done;
        while taken < limit {
            let packet = match reader.peek() {
                Next::Empty => break,
                Next::Foreign => {
                    stop = Stop::Punt;
                    break;
                }
                Next::Message(m) => m,
            };
            match self.seal_one(packet, dest, now, mtu) {
                Stop::Done => {}
                other => {
                    stop = other;
                    break;
                }
            }
            reader.take();
            taken += 1;
        }
        reader.release();
        (taken, stop)
    }

    /// One packet into `dest`: Done (sealed), Punt or Full.
    pub fn seal_one(&mut self, packet: &[u8], dest: &mut Writer, now: f64, mtu: usize) -> Stop {
        let Some(slot) = dest.reserve() else {
            return Stop::Full;
        };
        match self.outbound_one(packet, now, mtu, slot) {
            Out::Punt => Stop::Punt,
            Out::Sealed(len) => {
                dest.commit(len);
                Stop::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::Owned;

    const ENDPOINT: [u8; HEADER_SIZE] = {
        let mut h = [0u8; HEADER_SIZE];
        h[0] = 4;
        h[3] = 51;
        h[4] = 192;
        h
    };

    fn packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    /// Two fast paths with one session between them (a's send key is b's receive key).
    fn pair() -> (FastPath, FastPath) {
        let mut a = FastPath::default();
        let mut b = FastPath::default();
        assert!(a.table.install(1, 2, &[1; 32], &[2; 32], 0.0, 10, true));
        assert!(b.table.install(2, 1, &[2; 32], &[1; 32], 0.0, 20, true));
        for (fp, peer, local, net) in [
            (&mut a, 10, 1, [100, 64, 0, 0]),
            (&mut b, 20, 2, [10, 0, 0, 0]),
        ] {
            fp.table.peers.insert(
                peer,
                crate::table::PeerState {
                    endpoint: Some(ENDPOINT),
                    send_index: Some(local),
                },
            );
            assert!(fp.table.routes.insert(&net, 16, peer));
        }
        (a, b)
    }

    #[test]
    fn a_packet_goes_through_rings_both_ways() {
        let (mut a, mut b) = pair();
        let mut udp = Owned::new(8, 1400).unwrap();
        let mut w0 = Owned::new(8, 1280).unwrap();
        let mut w1 = Owned::new(8, 1280).unwrap();
        let mut tun = Owned::new(8, 1280).unwrap();
        let udp = RingMem::from_slice(udp.mem()).unwrap();
        let tun = RingMem::from_slice(tun.mem()).unwrap();
        let original = packet([100, 64, 0, 2], [10, 0, 0, 5], 1000);
        let mut writer = tun.writer();
        writer.reserve().unwrap()[..1000].copy_from_slice(&original);
        writer.commit(1000);
        writer.publish();
        let mut dest = udp.writer();
        assert_eq!(b.outbound(&tun, &mut dest, 100, 1.0, 1420), (1, Stop::Done));
        dest.publish();
        let (w0, w1) = (
            RingMem::from_slice(w0.mem()).unwrap(),
            RingMem::from_slice(w1.mem()).unwrap(),
        );
        let mut workers = [w0.writer(), w1.writer()];
        assert_eq!(
            a.inbound_to_rings(&udp, &mut workers, 100, 1.0),
            (1, Stop::Done)
        );
        let got: u64 = workers.into_iter().map(Writer::publish).sum();
        assert_eq!(got, 1);
        let activity = a.table.take_activity();
        assert_eq!(activity[0].1.rx_packets, 1);
        assert_eq!(activity[0].1.rx_bytes, 1008 + 32); // padded to 16
        assert_eq!(a.drops, [0; DROP_KINDS]);
    }

    #[test]
    fn hostile_messages_punt_or_drop() {
        let (mut a, mut b) = pair();
        let mut slot = vec![0u8; 2000];
        let inner = packet([100, 64, 0, 2], [10, 0, 0, 5], 100);
        let Out::Sealed(n) = b.outbound_one(&inner, 1.0, 1420, &mut slot) else {
            panic!("sealed expected")
        };
        let message = slot[..n].to_vec();
        assert_eq!(a.inbound_one(&message, 1.0, 1280), In::Deliver(100));
        assert_eq!(a.inbound_one(&message, 1.0, 1280), In::Drop(Drop::Replay));
        let mut corrupt = message.clone();
        corrupt[60] ^= 1;
        assert_eq!(
            a.inbound_one(&corrupt, 1.0, 1280),
            In::Drop(Drop::DecryptFailed)
        );
        let mut other_endpoint = message.clone();
        other_endpoint[4] = 1;
        assert_eq!(a.inbound_one(&other_endpoint, 1.0, 1280), In::Punt);
        assert_eq!(a.inbound_one(&message[..40], 1.0, 1280), In::Punt);
        assert_eq!(
            a.inbound_one(&message, 200.0, 1280),
            In::Drop(Drop::ExpiredKeypair)
        );
        // Spoofed: a source outside b's allowed IPs as a seen from a.
        let spoofed = packet([100, 65, 0, 2], [10, 0, 0, 5], 100);
        let Out::Sealed(n) = b.outbound_one(&spoofed, 1.0, 1420, &mut slot) else {
            panic!("sealed expected")
        };
        assert_eq!(
            a.inbound_one(&slot[..n], 1.0, 1280),
            In::Drop(Drop::SpoofedSource)
        );
        assert_eq!(
            b.outbound_one(&inner[..19], 1.0, 1420, &mut slot),
            Out::Punt
        );
        assert_eq!(b.outbound_one(&inner, 181.0, 1420, &mut slot), Out::Punt);
    }
}

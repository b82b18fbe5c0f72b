//! The PyO3 surface: `gateway._native.Transport`, the API of `gateway/wireguard/transport.py`
//! (whose pure-Python twin is `transport_py.PyTransport`). Rings arrive as writable buffers
//! of their shared mapping (`Ring.memory()`); packets and keys as bytes-like objects.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::fastpath::{FastPath, Stop};
use crate::layout;
use crate::replay::Replay;
use crate::ring::{RingMem, Writer};
use crate::table::{OpenError, PeerState, HEADER_SIZE};
use crate::{udp, udp_recv};

/// A writable, contiguous byte buffer held for the duration of one call.
struct Held(PyBuffer<u8>);

impl Held {
    fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buf = PyBuffer::<u8>::get(obj)?;
        if buf.readonly() || !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "a writable, contiguous buffer is needed",
            ));
        }
        Ok(Held(buf))
    }

    fn readable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buf = PyBuffer::<u8>::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err("a contiguous buffer is needed"));
        }
        Ok(Held(buf))
    }

    fn bytes(&self) -> &[u8] {
        let (ptr, len) = (self.0.buf_ptr() as *const u8, self.0.len_bytes());
        if len == 0 || ptr.is_null() {
            return &[]; // an empty export may carry any pointer, even null
        }
        // SAFETY: the buffer is contiguous, `len` bytes at a non-null `ptr`, and exported (so
        // neither freed nor resized) while `self` lives; the GIL is held, so no Python code
        // writes it meanwhile.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = (self.0.buf_ptr() as *mut u8, self.0.len_bytes());
        if len == 0 || ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as `bytes`, and the export is writable (checked in `writable`); `&mut self`
        // makes this the only slice of it in this call.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    fn ring(&self) -> PyResult<RingMem<'_>> {
        // SAFETY: the mapping stays mapped while the export lives (mmap refuses to close
        // with exports), i.e. for the borrow of `self`; other processes use it only through
        // the ring protocol. `attach` checks alignment, header and size.
        unsafe { RingMem::attach(self.0.buf_ptr() as *mut u8, self.0.len_bytes()) }
            .ok_or_else(|| PyValueError::new_err("not an shm_ring ring's memory"))
    }
}

fn stop_code(stop: Stop) -> u8 {
    stop as u8
}

#[pyclass(module = "gateway._native", unsendable)]
pub struct Transport {
    fp: FastPath,
}

#[pymethods]
impl Transport {
    #[new]
    fn new() -> Self {
        Transport {
            fp: FastPath::default(),
        }
    }

    #[allow(clippy::too_many_arguments)] // reason: the session's fields, as Python passes them
    #[pyo3(signature = (local, *, remote, send_key, recv_key, created, peer, confirmed))]
    fn install(
        &mut self,
        local: u32,
        remote: u32,
        send_key: &[u8],
        recv_key: &[u8],
        created: f64,
        peer: u64,
        confirmed: bool,
    ) -> PyResult<()> {
        if self
            .fp
            .table
            .install(local, remote, send_key, recv_key, created, peer, confirmed)
        {
            Ok(())
        } else {
            Err(PyValueError::new_err("session keys must be 32 bytes"))
        }
    }

    fn confirm(&mut self, local: u32) -> bool {
        self.fp.table.confirm(local)
    }

    fn remove(&mut self, local: u32) -> bool {
        self.fp.table.remove(local)
    }

    #[pyo3(signature = (peer, endpoint, send_index))]
    fn set_peer(
        &mut self,
        peer: u64,
        endpoint: Option<&[u8]>,
        send_index: Option<u32>,
    ) -> PyResult<()> {
        let endpoint = match endpoint {
            None => None,
            Some(raw) => Some(
                <[u8; HEADER_SIZE]>::try_from(raw)
                    .map_err(|_| PyValueError::new_err("an endpoint header is 36 bytes"))?,
            ),
        };
        self.fp.table.peers.insert(
            peer,
            PeerState {
                endpoint,
                send_index,
            },
        );
        Ok(())
    }

    fn remove_peer(&mut self, peer: u64) -> bool {
        self.fp.table.peers.remove(&peer).is_some()
    }

    fn set_routes(&mut self, routes: Vec<(Vec<u8>, u32, u64)>) -> PyResult<()> {
        let mut table = crate::routes::Routes::default();
        for (address, plen, peer) in routes {
            if !table.insert(&address, plen, peer) {
                return Err(PyValueError::new_err(
                    "a route is a 4- or 16-byte address and its prefix length",
                ));
            }
        }
        self.fp.table.routes = table;
        Ok(())
    }

    fn send_counter(&self, local: u32) -> Option<u64> {
        self.fp.table.sessions.get(&local).map(|s| s.send_counter)
    }

    /// Move a session's send counter forward (never back: a counter is never reused).
    fn advance_send_counter(&mut self, local: u32, counter: u64) -> bool {
        match self.fp.table.sessions.get_mut(&local) {
            Some(s) if counter >= s.send_counter => {
                s.send_counter = counter;
                true
            }
            _ => false,
        }
    }

    fn set_send_limit(&mut self, local: u32, limit: u64) -> bool {
        self.fp
            .table
            .sessions
            .get_mut(&local)
            .map(|s| s.send_limit = limit)
            .is_some()
    }

    /// The replay window as `replay.py` stores it (native-endian u64 words).
    fn replay_window<'py>(&self, py: Python<'py>, local: u32) -> Option<Bound<'py, PyBytes>> {
        let session = self.fp.table.sessions.get(&local)?;
        let words = session.replay.export();
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        Some(PyBytes::new(py, &raw))
    }

    fn load_replay_window(&mut self, local: u32, window: &[u8]) -> bool {
        let words: Vec<u64> = window
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        match (
            self.fp.table.sessions.get_mut(&local),
            Replay::import(&words),
        ) {
            (Some(session), Some(replay)) if window.len() % 8 == 0 => {
                session.replay = replay;
                true
            }
            _ => false,
        }
    }

    /// Seal `plaintext` into `out` (transport header + ciphertext + tag); False when the
    /// session is unknown, its counters are spent or `out` is not 32 bytes longer.
    fn seal(
        &mut self,
        local: u32,
        plaintext: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let plain = Held::readable(plaintext)?;
        let mut dest = Held::writable(out)?;
        let dest = dest.bytes_mut();
        if dest.len() != plain.bytes().len() + 32 {
            return Ok(false);
        }
        Ok(self.fp.table.seal(local, plain.bytes(), dest).is_some())
    }

    /// Open a transport message into `out` (its length less 32): 0 opened, 1 unknown
    /// session, 2 failed authentication, 3 replayed counter.
    fn open(
        &mut self,
        local: u32,
        message: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<u8> {
        let message = Held::readable(message)?;
        let mut dest = Held::writable(out)?;
        Ok(
            match self.fp.table.open(local, message.bytes(), dest.bytes_mut()) {
                Ok(_) => 0,
                Err(OpenError::Unknown) => 1,
                Err(OpenError::DecryptFailed) => 2,
                Err(OpenError::Replay) => 3,
            },
        )
    }

    /// Up to `limit` messages of the UDP ring into the workers' rings by flow; returns
    /// (messages taken, 0 done | 1 the next is Python's).
    fn inbound(
        &mut self,
        source: &Bound<'_, PyAny>,
        workers: Vec<Bound<'_, PyAny>>,
        limit: usize,
        now: f64,
    ) -> PyResult<(usize, u8)> {
        let source = Held::writable(source)?;
        let source = source.ring()?;
        let held = workers
            .iter()
            .map(Held::writable)
            .collect::<PyResult<Vec<_>>>()?;
        let rings = held.iter().map(Held::ring).collect::<PyResult<Vec<_>>>()?;
        let mut writers: Vec<Writer> = rings.iter().map(RingMem::writer).collect();
        let (taken, stop) = self.fp.inbound_to_rings(&source, &mut writers, limit, now);
        for writer in writers {
            writer.publish();
        }
        Ok((taken, stop_code(stop)))
    }

    /// As `inbound`, but the inner packets come back as bytes (for the firewall), at most
    /// `max_inner` bytes each.
    fn inbound_packets<'py>(
        &mut self,
        py: Python<'py>,
        source: &Bound<'py, PyAny>,
        limit: usize,
        now: f64,
        max_inner: usize,
    ) -> PyResult<(usize, u8, Vec<Bound<'py, PyBytes>>)> {
        let source = Held::writable(source)?;
        let source = source.ring()?;
        let mut packets = Vec::new();
        let (taken, stop) = self
            .fp
            .inbound(&source, limit, now, max_inner, &mut |fp, len| {
                packets.push(PyBytes::new(py, fp.delivered(len)));
                true
            });
        Ok((taken, stop_code(stop), packets))
    }

    /// Up to `limit` packets of a worker ring sealed into the UDP ring; returns (packets
    /// taken, 0 done | 1 the next is Python's | 2 the UDP ring is full).
    fn outbound(
        &mut self,
        source: &Bound<'_, PyAny>,
        dest: &Bound<'_, PyAny>,
        limit: usize,
        now: f64,
        mtu: usize,
    ) -> PyResult<(usize, u8)> {
        let source = Held::writable(source)?;
        let source = source.ring()?;
        let dest = Held::writable(dest)?;
        let dest = dest.ring()?;
        let mut writer = dest.writer();
        let (taken, stop) = self.fp.outbound(&source, &mut writer, limit, now, mtu);
        writer.publish();
        Ok((taken, stop_code(stop)))
    }

    /// Packets (the firewall's) sealed into the UDP ring, in order, until one is Python's or
    /// the ring is full; returns (packets taken, stop code as `outbound`).
    fn outbound_packets(
        &mut self,
        packets: Vec<Bound<'_, PyAny>>,
        dest: &Bound<'_, PyAny>,
        now: f64,
        mtu: usize,
    ) -> PyResult<(usize, u8)> {
        let dest = Held::writable(dest)?;
        let dest = dest.ring()?;
        let mut writer = dest.writer();
        let mut taken = 0;
        let mut stop = Stop::Done;
        for packet in &packets {
            let packet = Held::readable(packet)?;
            match self.fp.seal_one(packet.bytes(), &mut writer, now, mtu) {
                Stop::Done => taken += 1,
                other => {
                    stop = other;
                    break;
                }
            }
        }
        writer.publish();
        Ok((taken, stop_code(stop)))
    }

    /// (local index, rx packets, rx bytes, tx packets, tx bytes) of each session used since
    /// the last call.
    fn take_activity(&mut self) -> Vec<(u32, u64, u64, u64, u64)> {
        self.fp
            .table
            .take_activity()
            .into_iter()
            .map(|(i, a)| (i, a.rx_packets, a.rx_bytes, a.tx_packets, a.tx_bytes))
            .collect()
    }

    /// Drops since the last call: decrypt failed, replay, expired keypair, malformed inner,
    /// spoofed source, ring full.
    fn take_drops(&mut self) -> Vec<u64> {
        let drops = self.fp.drops.to_vec();
        self.fp.drops = Default::default();
        drops
    }
}

/// Up to `limit` messages of the ring to the UDP process onto the socket `fd` as GSO sends
/// (`udp::send_from_ring`). Returns (taken, malformed, consumed, sent, dropped, syscalls,
/// gso_batches, gso_datagrams, source_fallbacks, gso_oversize, gso_fallbacks, bytes,
/// blocked, foreign, gso still on, the messages a full socket did not take).
#[pyfunction]
#[allow(clippy::type_complexity)] // reason: one flat tuple per batch, unpacked by udp_native.py
fn udp_send_from_ring<'py>(
    py: Python<'py>,
    fd: i32,
    v6_socket: bool,
    gso: bool,
    ring: &Bound<'py, PyAny>,
    limit: usize,
) -> PyResult<([usize; 12], bool, bool, bool, Vec<Bound<'py, PyBytes>>)> {
    let held = Held::writable(ring)?;
    let ring = held.ring()?;
    let mut sock = udp::Socket { fd, v6: v6_socket };
    let (mut gso, mut unsent) = (gso, Vec::new());
    let s = udp::send_from_ring(&mut sock, &ring, limit, &mut gso, v6_socket, &mut unsent);
    let unsent = unsent.iter().map(|m| PyBytes::new(py, m)).collect();
    Ok((
        [
            s.taken,
            s.malformed,
            s.consumed,
            s.sent,
            s.dropped,
            s.syscalls,
            s.gso_batches,
            s.gso_datagrams,
            s.source_fallbacks,
            s.gso_oversize,
            s.gso_fallbacks,
            s.bytes,
        ],
        s.blocked,
        s.foreign,
        gso,
        unsent,
    ))
}

/// The UDP process's receive side (`udp_recv::Receiver`): it keeps the rest of a GRO read
/// between calls.
#[pyclass(module = "gateway._native", unsendable)]
pub struct UdpReceiver {
    rx: udp_recv::Receiver,
}

#[pymethods]
impl UdpReceiver {
    #[new]
    fn new() -> Self {
        UdpReceiver {
            rx: udp_recv::Receiver::default(),
        }
    }

    /// Up to `limit` datagrams read from `fd` and framed into `ring` (the caller leaves that
    /// many free slots). Returns ([datagrams, framed, framed_bytes, too_big, syscalls,
    /// coalesced_reads, errors], the message for Python that stopped the batch (a
    /// handshake, or one longer than a slot) or None);
    /// raises OSError for a read error that is not a one-shot ICMP report.
    fn receive<'py>(
        &mut self,
        py: Python<'py>,
        fd: i32,
        ring: &Bound<'py, PyAny>,
        limit: usize,
        max_payload: usize,
    ) -> PyResult<([usize; 7], Option<Bound<'py, PyBytes>>)> {
        let held = Held::writable(ring)?;
        let ring = held.ring()?;
        let mut writer = ring.writer();
        let mut stats = udp_recv::RecvStats::default();
        let mut read = |buf: &mut [u8]| udp_recv::recv_into(fd, buf);
        let stop = self
            .rx
            .receive(&mut read, &mut writer, limit, max_payload, &mut stats);
        writer.publish();
        let figures = [
            stats.datagrams,
            stats.framed,
            stats.framed_bytes,
            stats.too_big,
            stats.syscalls,
            stats.coalesced_reads,
            stats.errors,
        ];
        match stop {
            udp_recv::Stop::Done => Ok((figures, None)),
            udp_recv::Stop::Python(m) => Ok((figures, Some(PyBytes::new(py, &m)))),
            udp_recv::Stop::Error(e) => Err(std::io::Error::from_raw_os_error(e).into()),
        }
    }
}

/// shm_ring/layout.py's constants as this module has them (a test compares the two).
#[pyfunction]
fn layout_constants(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in layout::constants() {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Transport>()?;
    m.add_class::<UdpReceiver>()?;
    m.add_function(wrap_pyfunction!(layout_constants, m)?)?;
    m.add_function(wrap_pyfunction!(udp_send_from_ring, m)?)?;
    Ok(())
}

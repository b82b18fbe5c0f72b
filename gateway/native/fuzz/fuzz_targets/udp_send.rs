//! Any bytes as ring messages for the UDP send side: parsing, GSO planning and the send loop
//! (on a fake socket that answers with errnos from the input) must never panic, take every
//! message it reads, and account for every well-formed one (sent, dropped or unsent).
#![no_main]

use _native::ring::testing::Owned;
use _native::ring::RingMem;
use _native::udp::{parse_message, send_from_ring, Dest, Sender};
use libfuzzer_sys::fuzz_target;

struct Fake<'a> {
    errnos: &'a [u8],
}

impl Sender for Fake<'_> {
    fn send(&mut self, _: &Dest, g: &[&[u8]], _: Option<u16>, _: bool) -> Result<(), i32> {
        assert!(!g.is_empty() && g.len() <= 64);
        let Some((&first, rest)) = self.errnos.split_first() else {
            return Ok(());
        };
        self.errnos = rest;
        // 0: sent; else one of the errnos the send side tells apart.
        match first % 8 {
            0..=2 => Ok(()),
            3 => Err(libc::EAGAIN),
            4 => Err(libc::EMSGSIZE),
            5 => Err(libc::EIO),
            6 => Err(libc::EINVAL),
            _ => Err(libc::EPERM),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // [flags][errno count][errnos...][messages: u16 length + bytes]...
    let [flags, count, rest @ ..] = data else {
        return;
    };
    let (errnos, mut rest) = rest.split_at((*count as usize).min(rest.len()));
    let mut owned = Owned::new(32, 1400).unwrap();
    let ring = RingMem::from_slice(owned.mem()).unwrap();
    let mut writer = ring.writer();
    let mut well_formed = 0;
    while let [a, b, tail @ ..] = rest {
        let len = (usize::from(u16::from_le_bytes([*a, *b])) % 1400).clamp(1, tail.len().max(1));
        let Some(message) = tail.get(..len) else {
            break;
        };
        let Some(slot) = writer.reserve() else {
            break;
        };
        slot[..len].copy_from_slice(message);
        writer.commit(len);
        well_formed += usize::from(parse_message(message).is_some());
        rest = &tail[len..];
    }
    let written = writer.publish() as usize;
    let mut sock = Fake { errnos };
    let (mut gso, mut unsent) = (flags & 1 == 1, Vec::new());
    let s = send_from_ring(&mut sock, &ring, 100, &mut gso, flags & 2 == 2, &mut unsent);
    assert_eq!(s.taken, written); // 32 slots: fewer than the limit
    assert_eq!(s.consumed + unsent.len(), well_formed);
    assert_eq!(s.sent + s.dropped, s.consumed);
    assert!(unsent.is_empty() || s.blocked);
});

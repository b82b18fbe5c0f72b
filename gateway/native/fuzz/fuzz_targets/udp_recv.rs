//! Any bytes as what recvmsg returns to the UDP receive side (data, sender, local address,
//! GRO segment size, errnos): cutting and framing into a ring must never panic, never
//! write past a slot, and account for every datagram it hands out.
#![no_main]

use _native::ring::testing::Owned;
use _native::ring::{Next, RingMem};
use _native::udp::{parse_message, HEADER_SIZE};
use _native::udp_recv::{Read, Receiver, RecvStats, Stop};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // [limit][max_payload hi][slot size][reads: kind, segment (2), length (2), bytes]...
    let Some((&[limit, max_hi, slot], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let mut rest: &[u8] = rest;
    let (limit, max_payload) = (usize::from(limit % 80), usize::from(max_hi) * 8);
    let slot_size = u64::from(slot) * 8 + 1;
    let Some(mut owned) = Owned::new(64, slot_size) else {
        return;
    };
    let ring = RingMem::from_slice(owned.mem()).unwrap();
    let mut read = |buf: &mut [u8]| -> Read {
        let Some((&[kind, s0, s1, l0, l1], tail)) = rest.split_first_chunk::<5>() else {
            return Err(libc::EAGAIN);
        };
        let len = usize::from(u16::from_le_bytes([l0, l1]))
            .min(tail.len())
            .min(buf.len());
        buf[..len].copy_from_slice(&tail[..len]);
        let mut remote = [0u8; 16];
        let mut local = [0u8; 16];
        for (i, b) in tail.iter().take(16).enumerate() {
            remote[i] = *b;
            local[15 - i] = *b;
        }
        if kind & 1 == 1 {
            remote[..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        }
        rest = &tail[len..];
        match kind % 16 {
            14 => Err(libc::ECONNREFUSED),
            15 => Err(libc::EIO),
            _ => Ok((
                len,
                remote,
                u16::from(kind),
                local,
                usize::from(u16::from_le_bytes([s0, s1])),
            )),
        }
    };
    let mut rx = Receiver::default();
    let mut stats = RecvStats::default();
    for _ in 0..4 {
        let mut writer = ring.writer();
        // The ring is empty at each call (drained below): its 64 slots are free.
        let stop = rx.receive(&mut read, &mut writer, limit, max_payload, &mut stats);
        writer.publish();
        if let Stop::Python(m) = &stop {
            assert!(m.len() >= HEADER_SIZE && parse_message(m).is_some());
        }
        let mut reader = ring.reader();
        while let Next::Message(m) = reader.peek() {
            let (_, datagram) = parse_message(m).expect("framed messages parse");
            assert!(datagram.len() <= max_payload);
            reader.take();
        }
        reader.release();
    }
    assert!(stats.framed + stats.too_big <= stats.datagrams);
});

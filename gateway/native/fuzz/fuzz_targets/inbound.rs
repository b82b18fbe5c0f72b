//! A batch of UDP ring messages through `FastPath::inbound_to_rings` and `inbound` (the
//! firewall's way): raw messages, and messages sealed with a real session key so the inner
//! packet's checks are reached; then lengths a broken writer left. Nothing may panic, and
//! no more is taken than was published.
#![no_main]

use _native::fastpath::Stop;
use _native::ring::testing::Owned;
use _native::ring::RingMem;
use _native::testing::{client, gateway, sealed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (params, mut rest) = data.split_at(6);
    let now = f64::from(params[0]) * 1.5 - 10.0; // before, during and after the session's life
    let workers = usize::from(params[1] % 3) + 1;
    let worker_slots = u64::from(params[2] % 16) + 1;
    let limit = usize::from(params[3] % 40) + 1;
    let Some(mut udp) = Owned::new(32, 1400) else {
        return;
    };
    let mut gw = gateway();
    let mut cl = client();
    let mut messages = 0u64;
    {
        let ring = RingMem::from_slice(udp.mem()).unwrap();
        let mut writer = ring.writer();
        while rest.len() >= 3 {
            let (kind, len) = (rest[0], usize::from(u16::from_le_bytes([rest[1], rest[2]])));
            let take = len.min(rest.len() - 3);
            let body = &rest[3..3 + take];
            rest = &rest[3 + take..];
            let message = if kind % 2 == 0 {
                sealed(&mut cl, u64::from(kind / 2 % 4), body)
            } else {
                body.to_vec()
            };
            if message.is_empty() || message.len() > writer.stride() {
                continue;
            }
            let Some(slot) = writer.reserve() else { break };
            slot[..message.len()].copy_from_slice(&message);
            writer.commit(message.len());
            messages += 1;
        }
        writer.publish();
    }
    if params[4] & 1 == 1 {
        udp.set_length(usize::from(params[5] % 32), u32::from(params[4]) * 300);
    }
    let ring = RingMem::from_slice(udp.mem()).unwrap();
    let mut outs: Vec<Owned> = (0..workers)
        .map(|_| Owned::new(worker_slots, 1280).unwrap())
        .collect();
    let mems: Vec<RingMem> = outs
        .iter_mut()
        .map(|o| RingMem::from_slice(o.mem()).unwrap())
        .collect();
    let mut writers: Vec<_> = mems.iter().map(RingMem::writer).collect();
    let (taken, stop) = gw.inbound_to_rings(&ring, &mut writers, limit, now);
    assert!(taken as u64 <= messages);
    let delivered: u64 = writers.into_iter().map(|w| w.publish()).sum();
    assert!(delivered <= taken as u64);
    if stop != Stop::Punt {
        let mut collected = 0;
        let (more, _) = gw.inbound(&ring, limit, now, 1280, &mut |fp, len| {
            collected += fp.delivered(len).len().min(1);
            true
        });
        assert!(collected <= more);
    }
    let _ = gw.table.take_activity();
});

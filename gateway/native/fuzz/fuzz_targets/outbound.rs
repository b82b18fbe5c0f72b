//! Packets from a worker ring sealed into a UDP ring (`FastPath::outbound`), and one packet
//! into a slot of any size (`outbound_one`). Nothing may panic; a sealed message fits its
//! slot and the counter only moves forward.
#![no_main]

use _native::fastpath::Out;
use _native::ring::testing::Owned;
use _native::ring::RingMem;
use _native::testing::gateway;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (params, mut rest) = data.split_at(5);
    let now = f64::from(params[0]) * 1.5;
    let mtu = usize::from(u16::from_le_bytes([params[1], params[2]]));
    let udp_slots = u64::from(params[3] % 16) + 1;
    let mut gw = gateway();
    let mut tun = Owned::new(32, 1280).unwrap();
    let mut udp = Owned::new(udp_slots, 1400).unwrap();
    {
        let ring = RingMem::from_slice(tun.mem()).unwrap();
        let mut writer = ring.writer();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 1400;
            let take = len.min(rest.len() - 2);
            let packet = &rest[2..2 + take];
            rest = &rest[2 + take..];
            if packet.is_empty() || packet.len() > writer.stride() {
                continue;
            }
            let Some(slot) = writer.reserve() else { break };
            slot[..packet.len()].copy_from_slice(packet);
            writer.commit(packet.len());
        }
        writer.publish();
    }
    let before = gw.table.sessions.get(&101).map(|s| s.send_counter);
    let source = RingMem::from_slice(tun.mem()).unwrap();
    let dest = RingMem::from_slice(udp.mem()).unwrap();
    let mut writer = dest.writer();
    let (taken, _) = gw.outbound(&source, &mut writer, usize::from(params[4]) + 1, now, mtu);
    assert!(writer.publish() <= taken as u64);
    let after = gw.table.sessions.get(&101).map(|s| s.send_counter);
    assert!(after >= before);
    let mut slot = vec![0u8; usize::from(params[4]) * 8];
    if let Out::Sealed(len) = gw.outbound_one(data, now, mtu, &mut slot) {
        assert!(len <= slot.len());
    }
});

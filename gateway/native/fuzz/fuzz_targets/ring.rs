//! Any bytes as a ring's header words and lengths (geometry kept valid, as `attach`
//! checks it): the reader and the writer must stay inside the mapping and never panic.
#![no_main]

use _native::layout as l;
use _native::ring::testing::Owned;
use _native::ring::{Next, RingMem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let slots = u64::from(data[0] % 16) + 1;
    let slot_size = u64::from(data[1]) * 8 + 1;
    let Some(mut owned) = Owned::new(slots, slot_size) else {
        return;
    };
    let stride = l::stride_for(slot_size as usize);
    let mut words = data[2..].chunks_exact(8).map(|c| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(c);
        u64::from_le_bytes(raw)
    });
    for index in [l::W_HEAD, l::W_TAIL, l::W_SPANNING, l::W_SPANNING_RELEASED] {
        if let Some(value) = words.next() {
            owned.set_word(index, value % 64);
        }
    }
    for slot in 0..slots as usize {
        if let Some(value) = words.next() {
            owned.set_length(slot, value as u32);
        }
    }
    let ring = RingMem::from_slice(owned.mem()).unwrap();
    let mut reader = ring.reader();
    let mut seen = 0;
    while let Next::Message(m) = reader.peek() {
        assert!(!m.is_empty() && m.len() <= stride);
        reader.take();
        seen += 1;
        assert!(seen <= slots);
    }
    reader.release();
    let mut writer = ring.writer();
    let mut wrote = 0;
    while let Some(slot) = writer.reserve() {
        assert_eq!(slot.len(), stride);
        slot[0] = 1;
        writer.commit(1);
        wrote += 1;
        assert!(wrote <= slots);
    }
    writer.mark_full();
    writer.publish();
});

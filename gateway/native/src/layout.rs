//! The ring's byte layout: a mirror of `shm_ring/layout.py`, the one definition.
//!
//! `tests/test_native.py` compares every constant here with the Python module
//! (`_native.layout_constants()`), so a change on one side that the other misses fails.

pub const MAGIC: u64 = 0x464A_5247_5249_4E47;
pub const VERSION: u64 = 2;
pub const MAX_SLOTS: u64 = 1 << 20;
pub const MAX_SLOT_SIZE: u64 = 65535;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
pub const CACHE_LINE: usize = 64;

pub const W_MAGIC: usize = 0;
pub const W_VERSION: usize = 1;
pub const W_SLOTS: usize = 2;
pub const W_SLOT_SIZE: usize = 3;
pub const W_STRIDE: usize = 4;
pub const W_HEAD: usize = 16;
pub const W_BYTES: usize = 17;
pub const W_FULL: usize = 18;
pub const W_HIGH: usize = 19;
pub const W_PRODUCER_WAITING: usize = 20;
pub const W_CONSUMER_WAKEUPS: usize = 21;
pub const W_PRODUCER_SLEEPS: usize = 22;
pub const W_MESSAGES: usize = 23;
pub const W_SPANNING: usize = 24;
pub const W_TAIL: usize = 32;
pub const W_CONSUMER_WAITING: usize = 33;
pub const W_PRODUCER_WAKEUPS: usize = 34;
pub const W_CONSUMER_SLEEPS: usize = 35;
pub const W_RELEASED: usize = 36;
pub const W_SPANNING_RELEASED: usize = 37;
pub const HEADER_BYTES: usize = 48 * 8;

pub const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

pub const fn stride_for(slot_size: usize) -> usize {
    round_up(slot_size, CACHE_LINE)
}

pub const fn data_offset(slots: usize) -> usize {
    round_up(HEADER_BYTES + 4 * slots, CACHE_LINE)
}

/// The mapping's size for a geometry, or None where `layout.segment_size` raises.
pub fn segment_size(slots: u64, slot_size: u64) -> Option<usize> {
    if !(1..=MAX_SLOTS).contains(&slots) || !(1..=MAX_SLOT_SIZE).contains(&slot_size) {
        return None;
    }
    let (slots, slot_size) = (slots as usize, slot_size as usize);
    let size = data_offset(slots) + slots * stride_for(slot_size);
    (size as u64 <= MAX_SEGMENT_BYTES).then_some(size)
}

/// Every constant by its Python name, for the test that holds the two definitions together.
pub fn constants() -> Vec<(&'static str, u64)> {
    vec![
        ("MAGIC", MAGIC),
        ("VERSION", VERSION),
        ("MAX_SLOTS", MAX_SLOTS),
        ("MAX_SLOT_SIZE", MAX_SLOT_SIZE),
        ("MAX_SEGMENT_BYTES", MAX_SEGMENT_BYTES),
        ("CACHE_LINE", CACHE_LINE as u64),
        ("W_MAGIC", W_MAGIC as u64),
        ("W_VERSION", W_VERSION as u64),
        ("W_SLOTS", W_SLOTS as u64),
        ("W_SLOT_SIZE", W_SLOT_SIZE as u64),
        ("W_STRIDE", W_STRIDE as u64),
        ("W_HEAD", W_HEAD as u64),
        ("W_BYTES", W_BYTES as u64),
        ("W_FULL", W_FULL as u64),
        ("W_HIGH", W_HIGH as u64),
        ("W_PRODUCER_WAITING", W_PRODUCER_WAITING as u64),
        ("W_CONSUMER_WAKEUPS", W_CONSUMER_WAKEUPS as u64),
        ("W_PRODUCER_SLEEPS", W_PRODUCER_SLEEPS as u64),
        ("W_MESSAGES", W_MESSAGES as u64),
        ("W_SPANNING", W_SPANNING as u64),
        ("W_TAIL", W_TAIL as u64),
        ("W_CONSUMER_WAITING", W_CONSUMER_WAITING as u64),
        ("W_PRODUCER_WAKEUPS", W_PRODUCER_WAKEUPS as u64),
        ("W_CONSUMER_SLEEPS", W_CONSUMER_SLEEPS as u64),
        ("W_RELEASED", W_RELEASED as u64),
        ("W_SPANNING_RELEASED", W_SPANNING_RELEASED as u64),
        ("HEADER_BYTES", HEADER_BYTES as u64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_default_ring() {
        // 1000 x 1280 (the supervisor's default): 384 + 4000 rounded to 4416, stride 1280.
        assert_eq!(data_offset(1000), 4416);
        assert_eq!(stride_for(1280), 1280);
        assert_eq!(stride_for(1316), 1344);
        assert_eq!(segment_size(1000, 1280), Some(4416 + 1000 * 1280));
        assert_eq!(segment_size(0, 1280), None);
        assert_eq!(segment_size(1, 65536), None);
        assert_eq!(segment_size(MAX_SLOTS, MAX_SLOT_SIZE), None);
    }
}

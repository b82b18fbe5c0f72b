//! Which TUN worker gets a decrypted packet: `gateway/dataplane/flow.py`'s `flow_worker`,
//! the same bytes through the same CRC-32, so both backends pick the same worker.

fn crc(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// Worker index in 0..workers for a packet the caller checked to be IPv4 (>= 20 bytes) or
/// IPv6 (>= 40 bytes); slices past the end are cut short as Python's are.
pub fn flow_worker(packet: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let get = |from: usize, to: usize| &packet[from.min(packet.len())..to.min(packet.len())];
    let hash = if packet[0] >> 4 == 4 {
        let ihl = usize::from(packet[0] & 0x0F) * 4;
        let unfragmented = packet[6] & 0x3F == 0 && packet[7] == 0;
        if matches!(packet[9], 6 | 17 | 132) && unfragmented {
            crc(&[get(12, 20), get(ihl, ihl + 4)])
        } else {
            crc(&[get(12, 20)])
        }
    } else if packet.len() > 40 && matches!(packet[6], 6 | 17 | 132) {
        crc(&[get(8, 44)])
    } else {
        crc(&[get(8, 40)])
    };
    hash as usize % workers
}

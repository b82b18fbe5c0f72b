//! Cryptokey routing: longest-prefix match from an address to a peer id, the algorithm of
//! `gateway/wireguard/allowedips.py` (a map per prefix length in use, longest first).
//! Python installs the whole table whenever the Device's routes change.

use std::collections::HashMap;

#[derive(Default)]
struct Family {
    // (host bits shifted away, prefix -> peer), longest prefix first.
    levels: Vec<(u32, HashMap<u128, u64>)>,
}

impl Family {
    fn insert(&mut self, bits: u32, plen: u32, address: u128, peer: u64) {
        let shift = bits - plen;
        let key = if shift >= 128 { 0 } else { address >> shift };
        match self.levels.iter_mut().find(|(s, _)| *s == shift) {
            Some((_, map)) => {
                map.insert(key, peer);
            }
            None => {
                self.levels.push((shift, HashMap::from([(key, peer)])));
                self.levels.sort_by_key(|(s, _)| *s);
            }
        }
    }

    fn lookup(&self, address: u128) -> Option<u64> {
        self.levels.iter().find_map(|(shift, map)| {
            let key = if *shift >= 128 { 0 } else { address >> shift };
            map.get(&key).copied()
        })
    }
}

#[derive(Default)]
pub struct Routes {
    v4: Family,
    v6: Family,
}

impl Routes {
    /// Route `address`/`plen` (4 or 16 raw bytes) to `peer`; false for a bad length or prefix.
    pub fn insert(&mut self, address: &[u8], plen: u32, peer: u64) -> bool {
        match address.len() {
            4 if plen <= 32 => {
                let raw = u32::from_be_bytes([address[0], address[1], address[2], address[3]]);
                self.v4.insert(32, plen, u128::from(raw), peer);
                true
            }
            16 if plen <= 128 => {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(address);
                self.v6.insert(128, plen, u128::from_be_bytes(raw), peer);
                true
            }
            _ => false,
        }
    }

    /// The peer whose prefix holds a raw 4- or 16-byte address.
    pub fn lookup(&self, address: &[u8]) -> Option<u64> {
        match address.len() {
            4 => {
                let raw = u32::from_be_bytes([address[0], address[1], address[2], address[3]]);
                self.v4.lookup(u128::from(raw))
            }
            16 => {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(address);
                self.v6.lookup(u128::from_be_bytes(raw))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut r = Routes::default();
        assert!(r.insert(&[0, 0, 0, 0], 0, 1));
        assert!(r.insert(&[10, 1, 0, 0], 16, 2));
        assert!(r.insert(&[10, 1, 2, 3], 32, 3));
        assert!(!r.insert(&[10, 1, 2, 3], 33, 3));
        assert_eq!(r.lookup(&[10, 1, 2, 3]), Some(3));
        assert_eq!(r.lookup(&[10, 1, 9, 9]), Some(2));
        assert_eq!(r.lookup(&[8, 8, 8, 8]), Some(1));
        assert_eq!(r.lookup(&[0; 16]), None);
        assert!(r.insert(&[0; 16], 0, 4));
        assert_eq!(r.lookup(&[0xff; 16]), Some(4));
    }
}

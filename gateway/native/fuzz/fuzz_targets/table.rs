//! Sequences of what Python does to the native table (install, confirm, remove, peers,
//! routes) mixed with seal and open of fuzzed bytes: no panic, and a session's send counter
//! never goes back.
#![no_main]

use _native::table::{PeerState, Table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut table = Table::default();
    let mut out = vec![0u8; 2048];
    let mut last = std::collections::HashMap::new();
    for op in data.chunks(24) {
        let local = u32::from(op[0] % 4);
        let arg = op.get(1..).unwrap_or(&[]);
        match op[0] / 4 % 7 {
            0 => {
                let key = [op.get(1).copied().unwrap_or(0); 32];
                table.install(
                    local,
                    local + 10,
                    &key,
                    &key,
                    0.0,
                    u64::from(local),
                    op.len() % 2 == 0,
                );
                last.remove(&local);
            }
            1 => {
                table.confirm(local);
            }
            2 => {
                table.remove(local);
                last.remove(&local);
            }
            3 => {
                let mut endpoint = [0u8; 36];
                let n = arg.len().min(36);
                endpoint[..n].copy_from_slice(&arg[..n]);
                table.peers.insert(
                    u64::from(local),
                    PeerState {
                        endpoint: Some(endpoint),
                        send_index: Some(local),
                    },
                );
            }
            4 => {
                let plen = u32::from(op.get(1).copied().unwrap_or(0));
                let address = op.get(2..).unwrap_or(&[]);
                table
                    .routes
                    .insert(&address[..address.len().min(16)], plen, u64::from(local));
                let _ = table.routes.lookup(address);
            }
            5 => {
                if let Some(n) = table.seal(local, arg, &mut out) {
                    assert!(n == arg.len() + 32);
                    let counter = table.sessions[&local].send_counter;
                    assert!(last.get(&local).is_none_or(|&c| counter > c));
                    last.insert(local, counter);
                }
            }
            _ => {
                let _ = table.open(local, arg, &mut out);
            }
        }
    }
    let _ = table.take_activity();
});

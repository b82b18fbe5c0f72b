//! A gateway and a client with sessions between them, for tests and fuzz targets: the
//! gateway's peers 1..=3 sit at `ENDPOINT`, own 100.64.<peer>.0/24, and send on session
//! 100 + peer; the client's session 200 + peer seals what the gateway's opens.

use crate::fastpath::FastPath;
use crate::table::{PeerState, HEADER_SIZE};

pub const PEERS: u64 = 3;
pub const ENDPOINT: [u8; HEADER_SIZE] = {
    let mut header = [0u8; HEADER_SIZE];
    header[0] = 4;
    header[2] = 0xCA;
    header[3] = 0x6C;
    header[4] = 192;
    header[6] = 2;
    header[7] = 7;
    header
};

pub fn gateway() -> FastPath {
    let mut fp = FastPath::default();
    for peer in 1..=PEERS {
        let (send, recv) = ([peer as u8; 32], [peer as u8 + 100; 32]);
        let local = 100 + peer as u32;
        fp.table
            .install(local, local + 100, &send, &recv, 0.0, peer, true);
        fp.table.peers.insert(
            peer,
            PeerState {
                endpoint: Some(ENDPOINT),
                send_index: Some(local),
            },
        );
        fp.table.routes.insert(&[100, 64, peer as u8, 0], 24, peer);
    }
    fp.table.routes.insert(&[0; 16], 0, PEERS);
    fp
}

pub fn client() -> FastPath {
    let mut fp = FastPath::default();
    for peer in 1..=PEERS {
        let (send, recv) = ([peer as u8 + 100; 32], [peer as u8; 32]);
        let local = 200 + peer as u32;
        fp.table
            .install(local, local - 100, &send, &recv, 0.0, peer, true);
    }
    fp
}

/// A UDP ring message from `peer` (1..=PEERS) carrying `inner` as it is (a valid tag).
pub fn sealed(client: &mut FastPath, peer: u64, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE + inner.len() + 32];
    out[..HEADER_SIZE].copy_from_slice(&ENDPOINT);
    let local = 200 + (peer.clamp(1, PEERS) as u32);
    match client.table.seal(local, inner, &mut out[HEADER_SIZE..]) {
        Some(len) => out.truncate(HEADER_SIZE + len),
        None => out.truncate(HEADER_SIZE),
    }
    out
}

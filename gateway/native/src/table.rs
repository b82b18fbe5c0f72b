//! The sessions Python installs, the peers' send state and routes: what the per-packet path
//! reads. Python (the sans-I/O core) stays the authority: it creates, confirms and removes
//! sessions here; this table only guarantees that a send counter is never used twice and
//! that no session is used after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.

use std::collections::HashMap;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

use crate::replay::{Replay, REJECT_AFTER_MESSAGES};
use crate::routes::Routes;

pub const REJECT_AFTER_TIME: f64 = 180.0;
pub const HEADER_SIZE: usize = 36; // the endpoint header of a UDP ring message (framing.py)
pub const TRANSPORT_HEADER: usize = 16;
pub const TAG: usize = 16;
pub const MAX_TRANSPORT: usize = TRANSPORT_HEADER + 65536 + TAG;

/// Figures of one session since Python last took them.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

pub struct Session {
    pub peer: u64,
    pub remote_index: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    pub send_counter: u64,
    /// Counters from here on wait for Python (the session table persists the next block).
    pub send_limit: u64,
    pub replay: Replay,
    pub created: f64,
    /// A responder's session carries data only after Python saw its first packet.
    pub confirmed: bool,
    activity: Activity,
    touched: bool,
}

impl Session {
    pub fn expired(&self, now: f64) -> bool {
        now - self.created >= REJECT_AFTER_TIME
    }
}

/// A peer as the fast path needs it: where to send, and the session Python lets it use
/// (None while Python must see its packets: no session, packets staged, no endpoint).
#[derive(Default, Clone)]
pub struct PeerState {
    pub endpoint: Option<[u8; HEADER_SIZE]>,
    pub send_index: Option<u32>,
}

/// Why an `open` failed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum OpenError {
    Unknown,
    DecryptFailed,
    Replay,
}

fn nonce(counter: u64) -> Nonce {
    let mut raw = [0u8; 12];
    raw[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(raw)
}

fn key(raw: &[u8]) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, raw)
        .ok()
        .map(LessSafeKey::new)
}

#[derive(Default)]
pub struct Table {
    pub sessions: HashMap<u32, Session>,
    pub peers: HashMap<u64, PeerState>,
    pub routes: Routes,
    touched: Vec<u32>,
}

impl Table {
    /// Add (or replace) the session behind our receiver index `local`. False for bad keys.
    #[allow(clippy::too_many_arguments)] // reason: the session's fields, from one Python call
    pub fn install(
        &mut self,
        local: u32,
        remote: u32,
        send_key: &[u8],
        recv_key: &[u8],
        created: f64,
        peer: u64,
        confirmed: bool,
    ) -> bool {
        let (Some(send), Some(recv)) = (key(send_key), key(recv_key)) else {
            return false;
        };
        self.sessions.insert(
            local,
            Session {
                peer,
                remote_index: remote,
                send,
                recv,
                send_counter: 0,
                send_limit: REJECT_AFTER_MESSAGES,
                replay: Replay::default(),
                created,
                confirmed,
                activity: Activity::default(),
                touched: false,
            },
        );
        true
    }

    pub fn remove(&mut self, local: u32) -> bool {
        self.sessions.remove(&local).is_some()
    }

    pub fn confirm(&mut self, local: u32) -> bool {
        self.sessions
            .get_mut(&local)
            .map(|s| s.confirmed = true)
            .is_some()
    }

    /// Seal `plaintext` into `out` (header + ciphertext + tag), taking the next counter.
    /// None: no such session, counters exhausted, or `out` too short.
    pub fn seal(&mut self, local: u32, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
        let session = self.sessions.get_mut(&local)?;
        seal_into(session, plaintext, out)
    }

    /// Open a transport message (header included) of session `local` into `out`; records the
    /// counter in the replay window after the tag checked. Returns the plaintext length.
    pub fn open(&mut self, local: u32, message: &[u8], out: &mut [u8]) -> Result<usize, OpenError> {
        let session = self.sessions.get_mut(&local).ok_or(OpenError::Unknown)?;
        open_into(session, message, out)
    }

    pub fn touch(&mut self, local: u32, f: impl FnOnce(&mut Activity)) {
        if let Some(session) = self.sessions.get_mut(&local) {
            f(&mut session.activity);
            if !session.touched {
                session.touched = true;
                self.touched.push(local);
            }
        }
    }

    /// Each session's figures since the last call, in the order sessions were first touched.
    pub fn take_activity(&mut self) -> Vec<(u32, Activity)> {
        let mut out = Vec::with_capacity(self.touched.len());
        for local in self.touched.drain(..) {
            if let Some(session) = self.sessions.get_mut(&local) {
                if session.touched {
                    out.push((local, std::mem::take(&mut session.activity)));
                    session.touched = false;
                }
            }
        }
        out
    }
}

/// The transport header and the sealed `plaintext` into `out`; the counter is taken first.
pub fn seal_into(session: &mut Session, plaintext: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = TRANSPORT_HEADER + plaintext.len() + TAG;
    let counter = session.send_counter;
    if counter >= REJECT_AFTER_MESSAGES || counter >= session.send_limit || out.len() < total {
        return None;
    }
    session.send_counter = counter + 1; // before sealing: a counter is never used twice
    out[..4].copy_from_slice(&[4, 0, 0, 0]);
    out[4..8].copy_from_slice(&session.remote_index.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    let (body, rest) = out[TRANSPORT_HEADER..].split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let tag = session
        .send
        .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
        .ok()?;
    rest[..TAG].copy_from_slice(tag.as_ref());
    Some(total)
}

/// Open `message` (a transport message with its 16-byte header) into `out`.
pub fn open_into(
    session: &mut Session,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, OpenError> {
    if message.len() < TRANSPORT_HEADER + TAG || message.len() > MAX_TRANSPORT {
        return Err(OpenError::DecryptFailed);
    }
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&message[8..16]);
    let counter = u64::from_le_bytes(raw);
    let body_len = message.len() - TRANSPORT_HEADER - TAG;
    if out.len() < body_len {
        return Err(OpenError::DecryptFailed);
    }
    let (body, tag) = message[TRANSPORT_HEADER..].split_at(body_len);
    let mut tag_raw = [0u8; TAG];
    tag_raw.copy_from_slice(tag);
    let plain = &mut out[..body_len];
    plain.copy_from_slice(body);
    session
        .recv
        .open_in_place_separate_tag(nonce(counter), Aad::empty(), Tag::from(tag_raw), plain, 0..)
        .map_err(|_| OpenError::DecryptFailed)?;
    if !session.replay.validate(counter) {
        return Err(OpenError::Replay);
    }
    Ok(body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_no_second_time() {
        let mut table = Table::default();
        assert!(table.install(1, 2, &[1; 32], &[1; 32], 0.0, 7, true));
        assert!(!table.install(3, 4, &[1; 31], &[1; 32], 0.0, 7, true));
        let mut sealed = [0u8; 64];
        let n = table.seal(1, b"hello", &mut sealed).unwrap();
        assert_eq!(n, 16 + 5 + 16);
        let mut plain = [0u8; 64];
        assert_eq!(table.open(1, &sealed[..n], &mut plain), Ok(5));
        assert_eq!(&plain[..5], b"hello");
        assert_eq!(
            table.open(1, &sealed[..n], &mut plain),
            Err(OpenError::Replay)
        );
        sealed[20] ^= 1;
        assert_eq!(
            table.open(1, &sealed[..n], &mut plain),
            Err(OpenError::DecryptFailed)
        );
        assert_eq!(
            table.open(9, &sealed[..n], &mut plain),
            Err(OpenError::Unknown)
        );
        table.sessions.get_mut(&1).unwrap().send_counter = REJECT_AFTER_MESSAGES;
        assert_eq!(table.seal(1, b"x", &mut sealed), None);
    }
}

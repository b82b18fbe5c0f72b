//! The transport counter's sliding window (RFC 6479), as `gateway/wireguard/replay.py`:
//! 128 words of 64 bits, 8128 counters behind the highest one usable.

pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13); // 2**64 - 2**13 - 1
const WORDS: usize = 128;
const WINDOW: u64 = 8192 - 64;

#[derive(Clone)]
pub struct Replay {
    highest: u64,
    words: [u64; WORDS],
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            highest: 0,
            words: [0; WORDS],
        }
    }
}

/// The window as `replay.py` stores it: the highest counter, then the 128 words.
pub const STORAGE_WORDS: usize = 1 + WORDS;

impl Replay {
    pub fn export(&self) -> [u64; STORAGE_WORDS] {
        let mut out = [0u64; STORAGE_WORDS];
        out[0] = self.highest;
        out[1..].copy_from_slice(&self.words);
        out
    }

    /// A window a predecessor kept (`export`'s layout); None for the wrong length.
    pub fn import(words: &[u64]) -> Option<Self> {
        if words.len() != STORAGE_WORDS {
            return None;
        }
        let mut replay = Replay {
            highest: words[0],
            ..Replay::default()
        };
        replay.words.copy_from_slice(&words[1..]);
        Some(replay)
    }

    /// Whether `counter` would be accepted now (nothing recorded).
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter <= self.highest && self.highest - counter > WINDOW {
            return false;
        }
        let word = (counter >> 6) as usize % WORDS;
        counter > self.highest || self.words[word] & (1 << (counter & 63)) == 0
    }

    /// True the first time `counter` is seen inside the window; records it.
    pub fn validate(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let index = counter >> 6;
        if counter > self.highest {
            let current = self.highest >> 6;
            if index != current {
                if index - current >= WORDS as u64 {
                    self.words = [0; WORDS];
                } else {
                    for i in current + 1..=index {
                        self.words[i as usize % WORDS] = 0;
                    }
                }
            }
            self.highest = counter;
        }
        self.words[index as usize % WORDS] |= 1 << (counter & 63);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_as_the_python_filter() {
        let mut r = Replay::default();
        assert!(r.validate(0));
        assert!(!r.validate(0));
        assert!(r.validate(10_000));
        assert!(!r.validate(10_000 - WINDOW - 1));
        assert!(r.validate(10_000 - WINDOW));
        assert!(!r.validate(REJECT_AFTER_MESSAGES));
        assert!(r.validate(REJECT_AFTER_MESSAGES - 1));
        assert!(!r.validate(REJECT_AFTER_MESSAGES - 1));
    }
}

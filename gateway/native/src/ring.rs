//! One process's side of an `shm_ring` ring, in native code: read published one-slot
//! messages and release them (consumer), reserve slots, fill and publish them (producer).
//!
//! The protocol is `shm_ring/ring.py`'s (see its docstring): `head` is written only by the
//! producer, `tail` only by the consumer, both free-running slot counts; a message is visible
//! once `head` passes it. Native code handles one-slot messages only. Where the ring holds a
//! message of several slots (`W_SPANNING` ahead of `W_SPANNING_RELEASED`) or a length that
//! no producer of one-slot messages writes, the reader stops and Python's `Ring` takes over
//! for that message, so the two never disagree about where a message starts.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout as l;

/// A ring's mapping, checked against its header. Borrowed for `'a`.
pub struct RingMem<'a> {
    base: *mut u8,
    len: usize,
    slots: u64,
    stride: usize,
    data_off: usize,
    _mapping: PhantomData<&'a mut [u8]>,
}

impl<'a> RingMem<'a> {
    /// A ring in memory this code borrows exclusively (tests, fuzzing).
    pub fn from_slice(mem: &'a mut [u8]) -> Option<Self> {
        // SAFETY: `mem` is a live, writable region of `mem.len()` bytes, borrowed for 'a
        // and by nobody else; `attach` checks alignment and size before any access.
        unsafe { Self::attach(mem.as_mut_ptr(), mem.len()) }
    }

    /// Attach to a ring at `base`, checking its header as `layout.read_geometry` does.
    ///
    /// # Safety
    /// `base..base + len` must be a live, writable mapping for `'a` (the caller holds the
    /// Python buffer export that keeps it mapped). Other processes may use it only through
    /// the ring protocol, as the opposite side (or the same side, never concurrently).
    pub unsafe fn attach(base: *mut u8, len: usize) -> Option<Self> {
        if base.is_null() || (base as usize) % 8 != 0 || len < l::HEADER_BYTES {
            return None;
        }
        let mut ring = RingMem {
            base,
            len,
            slots: 1,
            stride: 64,
            data_off: 0,
            _mapping: PhantomData,
        };
        if ring.load(l::W_MAGIC) != l::MAGIC || ring.load(l::W_VERSION) != l::VERSION {
            return None;
        }
        let (slots, slot_size) = (ring.load(l::W_SLOTS), ring.load(l::W_SLOT_SIZE));
        if l::segment_size(slots, slot_size) != Some(len)
            || ring.load(l::W_STRIDE) != l::stride_for(slot_size as usize) as u64
        {
            return None;
        }
        ring.slots = slots;
        ring.stride = l::stride_for(slot_size as usize);
        ring.data_off = l::data_offset(slots as usize);
        Some(ring)
    }

    /// The largest message a slot holds.
    pub fn stride(&self) -> usize {
        self.stride
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        debug_assert!(index < l::HEADER_BYTES / 8);
        // SAFETY: the header is the first HEADER_BYTES of the mapping (checked in attach),
        // `base` is 8-aligned, so word `index` (< 48) is an aligned u64 inside it. It is
        // shared with another process, hence accessed only atomically.
        unsafe { &*(self.base.add(index * 8) as *const AtomicU64) }
    }

    fn load(&self, index: usize) -> u64 {
        self.word(index).load(Ordering::Acquire)
    }

    fn store(&self, index: usize, value: u64) {
        self.word(index).store(value, Ordering::Release)
    }

    fn slot_of(&self, position: u64) -> usize {
        (position % self.slots) as usize
    }

    fn length(&self, slot: usize) -> u32 {
        // SAFETY: slot < slots, and the lengths array (slots x u32, 4-aligned) follows the
        // header inside the mapping (segment_size checked). The entry of a published slot is
        // not written until the consumer releases it.
        unsafe { (self.base.add(l::HEADER_BYTES + 4 * slot) as *const u32).read() }
    }

    fn set_length(&self, slot: usize, value: u32) {
        // SAFETY: as `length`; the entry of a reserved (unpublished) slot is the producer's.
        unsafe { (self.base.add(l::HEADER_BYTES + 4 * slot) as *mut u32).write(value) }
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        debug_assert!(self.data_off + (slot + 1) * self.stride <= self.len);
        // SAFETY: slot < slots and data_off + slots * stride == len (segment_size).
        unsafe { self.base.add(self.data_off + slot * self.stride) }
    }

    /// The consumer's view of what is published now.
    pub fn reader(&self) -> Reader<'_, 'a> {
        let tail = self.load(l::W_TAIL);
        let head = self.load(l::W_HEAD); // before reading the slots it covers
        let plain = self.load(l::W_SPANNING) == self.load(l::W_SPANNING_RELEASED);
        Reader {
            ring: self,
            pos: tail,
            // A head beyond what the ring can hold is a corrupt header: read nothing.
            head: if head.wrapping_sub(tail) <= self.slots {
                head
            } else {
                tail
            },
            plain,
            taken: 0,
        }
    }

    /// The producer's view of the room there is now.
    pub fn writer(&self) -> Writer<'_, 'a> {
        let head = self.load(l::W_HEAD);
        let tail = self.load(l::W_TAIL);
        let used = head.wrapping_sub(tail).min(self.slots);
        Writer {
            ring: self,
            head,
            pos: head,
            room: self.slots - used,
            used,
            bytes: 0,
            full: false,
        }
    }
}

/// What the reader finds next.
pub enum Next<'m> {
    Empty,
    /// A one-slot message; `Reader::take` consumes it.
    Message(&'m [u8]),
    /// A message native code does not read (several slots, or a length no one-slot producer
    /// writes): Python's Ring reads it.
    Foreign,
}

pub struct Reader<'r, 'a> {
    ring: &'r RingMem<'a>,
    pos: u64,
    head: u64,
    plain: bool,
    taken: u64,
}

impl<'r> Reader<'r, '_> {
    pub fn peek(&self) -> Next<'r> {
        if self.pos == self.head {
            return Next::Empty;
        }
        if !self.plain {
            return Next::Foreign;
        }
        let slot = self.ring.slot_of(self.pos);
        let size = self.ring.length(slot) as usize;
        if size == 0 || size > self.ring.stride {
            return Next::Foreign;
        }
        // SAFETY: the slot is below head and not released: the producer does not write it
        // until tail passes it, and `size` is within the slot's stride bytes.
        Next::Message(unsafe { std::slice::from_raw_parts(self.ring.slot_ptr(slot), size) })
    }

    /// Consume the message `peek` returned.
    pub fn take(&mut self) {
        self.pos += 1;
        self.taken += 1;
    }

    /// Release every message taken (stores tail after their reads).
    pub fn release(self) -> u64 {
        if self.taken > 0 {
            let ring = self.ring;
            ring.store(l::W_TAIL, self.pos);
            let released = ring.load(l::W_RELEASED);
            ring.store(l::W_RELEASED, released.wrapping_add(self.taken));
        }
        self.taken
    }
}

pub struct Writer<'r, 'a> {
    ring: &'r RingMem<'a>,
    head: u64,
    pos: u64,
    room: u64,
    used: u64,
    bytes: u64,
    full: bool,
}

impl Writer<'_, '_> {
    pub fn stride(&self) -> usize {
        self.ring.stride
    }

    /// The next free slot's bytes, or None when there is none.
    pub fn reserve(&mut self) -> Option<&mut [u8]> {
        if self.pos - self.head >= self.room {
            return None;
        }
        let slot = self.ring.slot_of(self.pos);
        // SAFETY: the slot is at or above head and below tail + slots: the consumer does not
        // read it before head passes it, and this writer hands out one slot at a time
        // (the returned borrow ends before the next reserve).
        Some(unsafe { std::slice::from_raw_parts_mut(self.ring.slot_ptr(slot), self.ring.stride) })
    }

    /// A message found no room: counted once per batch at `publish`, as `Ring.send_many`
    /// counts a call that could not take everything.
    pub fn mark_full(&mut self) {
        self.full = true;
    }

    /// Record `len` bytes written into the slot `reserve` returned.
    pub fn commit(&mut self, len: usize) {
        debug_assert!(len >= 1 && len <= self.ring.stride);
        self.ring
            .set_length(self.ring.slot_of(self.pos), len as u32);
        self.pos += 1;
        self.bytes += len as u64;
    }

    /// Publish every committed message at once; returns how many there were.
    pub fn publish(self) -> u64 {
        let ring = self.ring;
        let count = self.pos - self.head;
        if self.full {
            let full = ring.load(l::W_FULL);
            ring.store(l::W_FULL, full.wrapping_add(1));
        }
        if count == 0 {
            return 0;
        }
        ring.store(l::W_HEAD, self.pos); // after the data and lengths
        let messages = ring.load(l::W_MESSAGES);
        ring.store(l::W_MESSAGES, messages.wrapping_add(count));
        let bytes = ring.load(l::W_BYTES);
        ring.store(l::W_BYTES, bytes.wrapping_add(self.bytes));
        let high = ring.load(l::W_HIGH);
        ring.store(l::W_HIGH, high.max(self.used + count));
        count
    }
}

/// Rings in ordinary memory, for tests and fuzz targets (the gateway's are shared mappings).
pub mod testing {
    use crate::layout as l;

    /// An 8-aligned, zeroed ring of `slots` x `slot_size` with its header written.
    pub struct Owned {
        buf: Vec<u8>,
        off: usize,
        size: usize,
    }

    impl Owned {
        pub fn new(slots: u64, slot_size: u64) -> Option<Self> {
            let size = l::segment_size(slots, slot_size)?;
            let buf = vec![0u8; size + 8];
            let off = buf.as_ptr().align_offset(8);
            let mut ring = Owned { buf, off, size };
            let stride = l::stride_for(slot_size as usize) as u64;
            for (word, value) in [
                (l::W_SLOTS, slots),
                (l::W_SLOT_SIZE, slot_size),
                (l::W_STRIDE, stride),
                (l::W_VERSION, l::VERSION),
                (l::W_MAGIC, l::MAGIC),
            ] {
                ring.set_word(word, value);
            }
            Some(ring)
        }

        pub fn mem(&mut self) -> &mut [u8] {
            &mut self.buf[self.off..self.off + self.size]
        }

        pub fn word(&self, index: usize) -> u64 {
            let at = self.off + index * 8;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&self.buf[at..at + 8]);
            u64::from_ne_bytes(raw)
        }

        pub fn set_word(&mut self, index: usize, value: u64) {
            let at = self.off + index * 8;
            self.buf[at..at + 8].copy_from_slice(&value.to_ne_bytes());
        }

        /// Overwrite the length entry of `slot` (what a broken writer could leave).
        pub fn set_length(&mut self, slot: usize, value: u32) {
            let at = self.off + l::HEADER_BYTES + 4 * slot;
            if at + 4 <= self.off + self.size {
                self.buf[at..at + 4].copy_from_slice(&value.to_ne_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Owned;
    use super::*;

    #[test]
    fn messages_go_round_and_wrap() {
        let mut owned = Owned::new(3, 100).unwrap();
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        for round in 0..5u8 {
            let mut writer = ring.writer();
            for i in 0..3u8 {
                let slot = writer.reserve().unwrap();
                slot[..2].copy_from_slice(&[round, i]);
                writer.commit(2);
            }
            assert!(writer.reserve().is_none());
            writer.mark_full();
            assert_eq!(writer.publish(), 3);
            let mut reader = ring.reader();
            for i in 0..3u8 {
                match reader.peek() {
                    Next::Message(m) => assert_eq!(m, &[round, i]),
                    _ => panic!("message expected"),
                }
                reader.take();
            }
            assert!(matches!(reader.peek(), Next::Empty));
            assert_eq!(reader.release(), 3);
        }
        assert_eq!(owned.word(l::W_FULL), 5);
        assert_eq!(owned.word(l::W_MESSAGES), 15);
        assert_eq!(owned.word(l::W_RELEASED), 15);
    }

    #[test]
    fn bad_lengths_and_headers_are_foreign_or_refused() {
        let mut owned = Owned::new(4, 64).unwrap();
        owned.set_word(l::W_HEAD, 1);
        owned.set_length(0, 65); // slot 0 claims more than its stride
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        assert!(matches!(ring.reader().peek(), Next::Foreign));
        let mut owned = Owned::new(4, 64).unwrap();
        owned.set_word(l::W_HEAD, 1_000); // more than the ring holds: read nothing
        let ring = RingMem::from_slice(owned.mem()).unwrap();
        assert!(matches!(ring.reader().peek(), Next::Empty));
        let mut owned = Owned::new(4, 64).unwrap();
        owned.set_word(l::W_SLOTS, 5);
        assert!(RingMem::from_slice(owned.mem()).is_none());
    }
}

//! firezone-gw's native per-packet path, called once per batch from Python (`gateway._native`).
//!
//! Layout: `layout` mirrors `shm_ring/layout.py`; `ring` is one side of a ring in shared
//! memory; `replay`, `routes`, `flow` and `table` are the protocol state the per-packet path
//! reads (Python installs it); `fastpath` makes the per-packet decisions and runs batches;
//! `python` (feature "python") is the PyO3 surface, the only module that knows Python.
//! `udp` is the UDP process's send side (ring batch -> GSO sendmsg); further system-call
//! batching (GRO receive, TUN vnet-header offloads) belongs next to it, exposed the same way.

pub mod fastpath;
pub mod flow;
pub mod layout;
pub mod replay;
pub mod ring;
pub mod routes;
pub mod table;
pub mod testing;
pub mod udp;
pub mod udp_recv;

#[cfg(feature = "python")]
mod python;

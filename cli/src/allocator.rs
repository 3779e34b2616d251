//! The process's allocator: jemalloc, configured to hand freed memory back to the system.
//!
//! glibc's malloc took about 15 % of the server's CPU samples under load (`perf`, fifteenth
//! session) and kept five times the live heap in its arenas; see `docs/performance.md`.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc when it initialises (the crate's symbols carry the `_rjem_` prefix): two
/// arenas, one per runtime worker thread on the two cores this service is sized for (each
/// thread's cache takes most allocations without the arena's lock), and memory freed for a
/// second returned to the system by a background thread rather than kept, so that a burst
/// does not leave the resident size at its peak. `_RJEM_MALLOC_CONF` overrides any of them
/// at start (more arenas on more cores); see `docs/operations.md`.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 70] =
    b"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

//! Allocator tuning for long-running processes (glibc, as in the image; other C libraries
//! need none).
//!
//! glibc's malloc serves a large allocation (over the mmap threshold, 128 KiB at start) with a
//! mapping of its own and unmaps it on free. But each time such a block is freed, glibc *raises*
//! the threshold to that block's size (up to 32 MiB), so later blocks of that size come from the
//! heap arenas instead, where a freed block stays resident while anything above it is alive.
//! argon2's 19 MiB of working memory per password check then stayed pinned in every blocking
//! thread's arena: auth's resident memory grew by 221% over an hour of mixed traffic. Setting the
//! threshold explicitly turns the raising off, so every large block is mapped and unmapped again.
//!
//! Capping the number of arenas (8 per core by default) bounds the per-thread heaps that the
//! blocking pools (database drivers, password hashing) would otherwise multiply.
//!
//! Freed blocks in the middle of a heap stay resident as well; every `serve` and `up` process
//! runs a trimmer thread that hands them back (`stratus_kit::memory::spawn_trimmer`).
//!
//! glibc's own `MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX` variables still win when set.

/// How often a long-running process looks for freed memory to hand back
/// (`stratus_kit::memory::spawn_trimmer`).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Allocations from this size up are mapped on their own and returned to the system on free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Tunes the allocator; call first thing in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores * 2).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters; no thread is allocating yet.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, arenas.max(2));
            }
        }
    }
}

//! Where a process's memory goes, as gauges on `/metrics`.
//!
//! Resident memory alone cannot tell a leak from a cache filling toward its bound, or from the
//! allocator holding freed pages. So next to the resident set (and its anonymous part: heap and
//! stacks) this reports the two big consumers a Stratus process has:
//!
//! - `sqlite_memory_bytes`: everything SQLite holds right now (page caches of every connection,
//!   prepared statements, schema), from `sqlite3_memory_used`. Page caches are bounded per
//!   connection (`PRAGMA cache_size`), so this climbs while the working set is first read and
//!   then levels off.
//! - `malloc_in_use_bytes` and `malloc_free_bytes` (glibc): bytes handed out and bytes the
//!   allocator keeps free inside its arenas. A growing free part with a flat in-use part is
//!   fragmentation, not a leak.
//!
//! The values are read when `/metrics` is rendered, so they cost nothing between scrapes.

/// One reading of the process's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub resident: u64,
    pub anonymous: u64,
    pub sqlite: u64,
    pub malloc_in_use: u64,
    pub malloc_free: u64,
}

/// Reads the process's memory now. Parts the platform does not report are zero.
pub fn read() -> Reading {
    let (resident, anonymous) = resident_and_anonymous();
    let (malloc_in_use, malloc_free) = malloc_bytes();
    Reading {
        resident,
        anonymous,
        sqlite: sqlite_bytes(),
        malloc_in_use,
        malloc_free,
    }
}

/// Sets the memory gauges from a fresh reading (called just before `/metrics` renders).
pub fn record() {
    let now = read();
    metrics::gauge!("process_resident_memory_bytes").set(now.resident as f64);
    metrics::gauge!("process_anonymous_memory_bytes").set(now.anonymous as f64);
    metrics::gauge!("sqlite_memory_bytes").set(now.sqlite as f64);
    metrics::gauge!("malloc_in_use_bytes").set(now.malloc_in_use as f64);
    metrics::gauge!("malloc_free_bytes").set(now.malloc_free as f64);
}

/// Bytes newly freed inside malloc's arenas above which the trimmer hands pages back.
const TRIM_ABOVE: u64 = 512 * 1024;

/// Starts a thread that, every `every`, hands the pages malloc keeps free inside its arenas back
/// to the operating system when enough were freed since the last look.
///
/// glibc returns freed memory to the system only from the top of a heap. A block freed in the
/// middle (a burst's buffers, a retried request's body, a reconnect's handshake) stays resident
/// for good, so a service's RSS creeps up over hours with nothing leaking: in the soak,
/// `malloc_free_bytes` grew while `malloc_in_use_bytes` stayed flat. `malloc_trim` releases
/// every whole free page (`MADV_DONTNEED`). A thread of its own, not a task: it works the same in
/// every component, whatever runtimes it runs.
pub fn spawn_trimmer(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("malloc-trim".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut trimmer = Trimmer::default();
                loop {
                    std::thread::sleep(every);
                    trimmer.round();
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "could not start the malloc trimmer; memory freed by bursts stays resident");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}

/// Decides when a trim is worth its cost.
///
/// A trim releases the pages behind free blocks but the blocks stay on malloc's free lists, so
/// `malloc_free_bytes` does not drop after one. What tells that pages became resident again is
/// the free total going *down* (blocks reused) and then back up (freed again). So the trimmer
/// keeps the lowest free total seen since its last trim and trims when the total has risen
/// [`TRIM_ABOVE`] past it; a quiet process costs one `mallinfo2` call a round.
#[derive(Debug, Default)]
pub struct Trimmer {
    low: Option<u64>,
}

impl Trimmer {
    /// One look at malloc's counters; true if it trimmed.
    pub fn round(&mut self) -> bool {
        let (_, free) = malloc_bytes();
        let low = self.low.map_or(0, |low| low.min(free));
        if free <= low + TRIM_ABOVE {
            self.low = Some(low);
            return false;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
        unsafe {
            libc::malloc_trim(0);
        }
        self.low = Some(free);
        true
    }
}

/// SQLite's own count of the bytes it has allocated (all connections of the process).
pub fn sqlite_bytes() -> u64 {
    // SAFETY: sqlite3_memory_used only reads SQLite's global allocation counter; it is safe to
    // call from any thread at any time, even before SQLite is initialised (it returns 0).
    let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// `VmRSS` and `RssAnon` from `/proc/self/status`, in bytes.
fn resident_and_anonymous() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    (
        status_kib(&status, "VmRSS:") * 1024,
        status_kib(&status, "RssAnon:") * 1024,
    )
}

/// The value of a `Name:   1234 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_bytes() -> (u64, u64) {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct of counters; glibc takes
    // its arena locks itself.
    let info = unsafe { libc::mallinfo2() };
    // uordblks: bytes in use from the arenas; hblkhd: bytes in blocks mapped on their own;
    // fordblks: free bytes kept inside the arenas.
    ((info.uordblks + info.hblkhd) as u64, info.fordblks as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_bytes() -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tstratus\nVmRSS:\t   30512 kB\nRssAnon:\t    5400 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), 30512);
        assert_eq!(status_kib(status, "RssAnon:"), 5400);
        assert_eq!(status_kib(status, "RssShmem:"), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reading_sees_this_process_and_sqlite_allocations() {
        let before = read();
        assert!(before.resident > 0 && before.anonymous > 0);
        assert!(before.anonymous <= before.resident);
        // An open in-memory database with a table in it holds SQLite memory.
        let mut db: *mut libsqlite3_sys::sqlite3 = std::ptr::null_mut();
        let name = c":memory:";
        // SAFETY: a valid C string and an out-pointer; the handle is closed below.
        let opened = unsafe { libsqlite3_sys::sqlite3_open(name.as_ptr(), &mut db) };
        assert_eq!(opened, libsqlite3_sys::SQLITE_OK);
        assert!(sqlite_bytes() > before.sqlite);
        // SAFETY: db came from sqlite3_open above and is not used afterwards.
        unsafe { libsqlite3_sys::sqlite3_close(db) };
        #[cfg(target_env = "gnu")]
        assert!(read().malloc_in_use > 0);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_in_the_middle_of_the_heap_goes_back_to_the_system() {
        let mut trimmer = Trimmer::default();
        trimmer.round();
        // 16 MiB of small blocks (under the mmap threshold, so from the heap), then all but
        // every 64th freed: the survivors pin the heap, so only a trim can return the rest.
        let blocks: Vec<Vec<u8>> = (0..8192).map(|n| vec![n as u8; 2048]).collect();
        let survivors: Vec<Vec<u8>> = blocks
            .into_iter()
            .enumerate()
            .filter_map(|(n, block)| (n % 64 == 0).then_some(block))
            .collect();
        let before = read().anonymous;
        assert!(trimmer.round(), "15 MiB newly free is worth a trim");
        let after = read().anonymous;
        assert!(
            after + 8 * 1024 * 1024 < before,
            "anonymous memory {before} -> {after}: the freed pages stayed resident"
        );
        // Nothing freed since: the next round costs one look and trims nothing.
        assert!(!trimmer.round());
        assert!(survivors.iter().all(|b| b.len() == 2048));
    }
}

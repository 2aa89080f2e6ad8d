//! This process's peak resident set and the machine's load, for the benchmarks that report
//! them. Included by each binary with `#[path = "rss.rs"] mod rss;`; not every binary uses every
//! function.
#![allow(dead_code)]

/// This process's peak resident set (VmHWM), bytes; 0 where `/proc/self/status` has none.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// This process's resident set now (VmRSS), bytes; 0 where `/proc/self/status` has none.
pub fn rss_now() -> u64 {
    status_bytes("VmRSS:")
}

/// A size line of `/proc/self/status` (given in kB there), bytes.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Start a new peak-RSS measurement (Linux: writing 5 to /proc/self/clear_refs resets VmHWM).
pub fn reset_peak_rss() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

/// Runs this benchmark again under `MALLOC_ARENA_MAX=2`, as every worker runs (the manifests
/// set it, and `stowage` sets it for itself): glibc reads it when the process starts, so a
/// process without it starts itself again with it set and exits with that one's status.
/// Returns when the variable is set.
pub fn with_two_malloc_arenas() -> anyhow::Result<()> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", "2")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// `/proc/loadavg`'s three load averages (1, 5, 15 min), or "unknown".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

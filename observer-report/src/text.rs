//! The rate contract of the default text stream (the digest): the observer
//! holds to it and the tests check it, so it is written once, here.

/// Lines per second for warnings, and again for windows.
pub const LINES_PER_S: u64 = 1;
/// Lines that may come at once before the rate applies.
pub const BURST: u64 = 3;
/// How often a roll-up of what was held back is written.
pub const ROLLUP_NS: u64 = 10_000_000_000;
/// Apart from critical lines, at most this many in any second: two full
/// buckets, what each earns within the second, and a roll-up.
pub const MAX_LINES_PER_S: u64 = 2 * (BURST + LINES_PER_S) + 1;

/// Apart from critical lines, at most this many over `secs` seconds.
pub fn max_lines(secs: u64) -> u64 {
    2 * (BURST + LINES_PER_S * secs) + secs * 1_000_000_000 / ROLLUP_NS + 1
}

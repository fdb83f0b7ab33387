//! Converts kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall
//! clock time.

use std::time::{Duration, SystemTime};

/// Offset between CLOCK_MONOTONIC and the wall clock, sampled at creation.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot: SystemTime,
}

/// Nanoseconds of CLOCK_MONOTONIC now.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

impl Clock {
    /// Samples the offset now.
    pub fn new() -> Self {
        let mono = Duration::from_nanos(monotonic_ns());
        Self { boot: SystemTime::now().checked_sub(mono).unwrap_or(SystemTime::UNIX_EPOCH) }
    }

    /// The wall-clock time of a kernel timestamp.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(monotonic_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_now() {
        let clock = Clock::new();
        let wall = clock.wall(monotonic_ns());
        let drift = SystemTime::now().duration_since(wall).unwrap_or_else(|error| error.duration());
        assert!(drift < Duration::from_millis(50), "drift {drift:?}");
    }
}

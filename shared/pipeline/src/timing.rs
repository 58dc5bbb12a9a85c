//! Time measurements and invocation deadlines.

use std::time::{Duration, Instant};

/// Whole milliseconds of a duration, for logs and reports.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Times consecutive steps of one unit of work: each [`Laps::lap`] returns the
/// milliseconds since the previous one.
#[derive(Debug)]
pub struct Laps {
    started: Instant,
    last: Instant,
}

impl Laps {
    /// Starts timing now.
    pub fn start() -> Self {
        let now = Instant::now();
        Laps {
            started: now,
            last: now,
        }
    }

    /// Milliseconds since the previous lap (or the start).
    pub fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let ms = millis(now - self.last);
        self.last = now;
        ms
    }

    /// Milliseconds since the start.
    pub fn total(&self) -> u64 {
        millis(self.started.elapsed())
    }
}

/// The deadline of a Lambda invocation (epoch milliseconds) as an [`Instant`], less a
/// safety margin of `margin` or a quarter of the time left, whichever is smaller (so a
/// short timeout still leaves room to work).
pub fn deadline_from_epoch_ms(deadline_ms: u64, margin: Duration) -> Instant {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    // Lambda sends epoch milliseconds; cargo-lambda's local emulator sends the timeout
    // itself (e.g. 600000). Anything before 2001 cannot be an epoch deadline.
    let left = if deadline_ms < 978_307_200_000 {
        Duration::from_millis(deadline_ms)
    } else {
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    };
    Instant::now() + left - margin.min(left / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_accepts_epoch_and_emulator_forms() {
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let left = |d: Instant| d.saturating_duration_since(Instant::now()).as_millis();
        // 60 s left on AWS: a 3 s margin.
        let d = deadline_from_epoch_ms(now_ms + 60_000, Duration::from_secs(3));
        assert!((56_000..=57_000).contains(&left(d)), "{}", left(d));
        // 2 s left: a quarter of it is kept back instead.
        let d = deadline_from_epoch_ms(now_ms + 2_000, Duration::from_secs(3));
        assert!((1_000..=1_500).contains(&left(d)), "{}", left(d));
        // cargo-lambda's emulator: the timeout itself.
        let d = deadline_from_epoch_ms(600_000, Duration::from_secs(3));
        assert!((596_000..=597_000).contains(&left(d)), "{}", left(d));
        // Already past: nothing left, no panic.
        assert_eq!(
            left(deadline_from_epoch_ms(
                now_ms - 5_000,
                Duration::from_secs(3)
            )),
            0
        );
    }

    #[test]
    fn laps_add_up() {
        let mut laps = Laps::start();
        std::thread::sleep(Duration::from_millis(5));
        let a = laps.lap();
        assert!(a >= 5);
        assert!(laps.total() >= a);
    }
}

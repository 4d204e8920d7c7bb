//! Pacing one class on one node: a token bucket that grants bytes in short slices and says how
//! long to wait, and a meter of the rate achieved. Pure: time comes in as `Instant` arguments.

use std::time::{Duration, Instant};

/// The longest wait a [`Permit`](super::Permit) ever asks for: a paced stream is never still for
/// longer, far below reqwest's read timeout (which restarts with every frame).
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// The slice of time one grant is worth at most (and the most a bucket saves up while idle).
const QUANTUM: f64 = 0.1;

/// A token bucket that lets a grant run into debt by at most one quantum: a grant is at most
/// [`QUANTUM`] worth of bytes, handed out at once with the wait that pays it back, so waits
/// stay near 0.1–0.2 s and many transfers interleave.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// Bytes per second; 0 grants nothing.
    rate: f64,
    /// Bytes that may go now; negative: owed, to be waited for.
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Changes the rate from `now` on (what accrued until `now` accrued at the old rate).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate as f64;
        self.tokens = self.tokens.min(self.quantum());
    }

    /// Grants up to `want` bytes: `(bytes, wait)`, wait ≤ [`MAX_WAIT`]. The bytes are counted
    /// as sent; the caller waits `wait`, then sends them. `(0, wait)`: nothing yet, ask again
    /// after `wait`.
    pub fn take(&mut self, want: u64, now: Instant) -> (u64, Duration) {
        self.refill(now);
        if self.rate <= 0.0 {
            return (0, MAX_WAIT);
        }
        let q = self.quantum();
        if -self.tokens > q {
            return (0, self.wait_until(-q));
        }
        let grant = want.min(q as u64).max(1).min(want);
        self.tokens -= grant as f64;
        (grant, self.wait_until(0.0))
    }

    /// How long until the tokens reach `level`, at most [`MAX_WAIT`].
    fn wait_until(&self, level: f64) -> Duration {
        let secs = ((level - self.tokens) / self.rate).clamp(0.0, MAX_WAIT.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(MAX_WAIT)
    }

    /// One quantum's worth of bytes, at least one.
    fn quantum(&self) -> f64 {
        (self.rate * QUANTUM).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + self.rate * dt).min(self.quantum());
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }
}

/// Seconds the [`Meter`] averages over.
const METER_SECS: u64 = 5;

/// Bytes per second over the last few seconds, in one-second slots.
#[derive(Debug, Clone)]
pub struct Meter {
    epoch: Instant,
    /// (second since `epoch`, bytes in it), indexed by second modulo [`METER_SECS`].
    slots: [(u64, u64); METER_SECS as usize],
}

impl Meter {
    pub fn new(epoch: Instant) -> Meter {
        Meter {
            epoch,
            slots: [(u64::MAX, 0); METER_SECS as usize],
        }
    }

    pub fn add(&mut self, bytes: u64, now: Instant) {
        let sec = now.saturating_duration_since(self.epoch).as_secs();
        let slot = &mut self.slots[(sec % METER_SECS) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
    }

    /// The average over the last [`METER_SECS`] seconds (the current one included).
    pub fn rate(&self, now: Instant) -> u64 {
        let sec = now.saturating_duration_since(self.epoch).as_secs();
        let total = self
            .slots
            .iter()
            .filter(|(s, _)| *s <= sec && sec - *s < METER_SECS)
            .fold(0u64, |sum, (_, b)| sum.saturating_add(*b));
        total / METER_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives one bucket as a transfer loop would: ask, "wait", ask again.
    fn run(rate: u64, want: u64, secs: u64) -> u64 {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut b = Bucket::default();
        b.set_rate(rate, t0);
        let (mut t, mut sent) = (t0, 0u64);
        while t < end {
            let (n, wait) = b.take(want, t);
            assert!(wait <= MAX_WAIT);
            t += wait.max(Duration::from_micros(1));
            if t < end {
                sent += n;
            }
        }
        sent
    }

    #[test]
    fn paces_to_the_rate() {
        let secs = 30;
        for rate in [125, 125_000, 1_250_000, 12_500_000] {
            for want in [1, 1500, 16 << 10, 256 << 10] {
                if rate * secs / want > 2_000_000 {
                    continue; // too many asks for a unit test
                }
                let sent = run(rate, want, secs);
                let ratio = sent as f64 / (rate * secs) as f64;
                assert!((0.95..=1.02).contains(&ratio), "{rate} {want}: {ratio}");
            }
        }
    }

    #[test]
    fn grants_are_short_slices() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        b.set_rate(125_000, t0);
        let (n, wait) = b.take(1 << 30, t0);
        assert_eq!(n, 12_500, "a tenth of a second's worth");
        assert_eq!(
            wait,
            Duration::from_millis(100),
            "a new bucket starts empty"
        );
        // Idle for a while: it saved one quantum, no more.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.take(1 << 30, t1), (12_500, Duration::ZERO));
        assert_eq!(b.take(1 << 30, t1), (12_500, Duration::from_millis(100)));
        assert_eq!(b.take(1 << 30, t1), (12_500, Duration::from_millis(200)));
        // In debt by more than a quantum: nothing more, come back when it is paid down.
        let (n, wait) = b.take(1 << 30, t1);
        assert_eq!(n, 0);
        assert_eq!(wait, Duration::from_millis(100));
    }

    #[test]
    fn a_slowed_bucket_still_waits_at_most_a_second() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        b.set_rate(u64::MAX, t0);
        let (n, _) = b.take(u64::MAX, t0);
        assert!(n > 0);
        b.take(u64::MAX, t0);
        b.set_rate(1, t0);
        let (n, wait) = b.take(10, t0);
        assert_eq!(n, 0);
        assert_eq!(wait, MAX_WAIT);
    }

    #[test]
    fn zero_rate_and_zero_want() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert_eq!(b.take(100, t0), (0, MAX_WAIT));
        b.set_rate(1000, t0);
        assert_eq!(b.take(0, t0), (0, Duration::ZERO));
        // A clock that goes backwards is treated as standing still.
        b.take(100, t0 + Duration::from_secs(5));
        let (_, w) = b.take(100, t0);
        assert!(w <= MAX_WAIT);
    }

    #[test]
    fn the_meter_averages_the_last_seconds() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        for s in 0..10 {
            m.add(1000, t0 + Duration::from_secs(s));
        }
        assert_eq!(m.rate(t0 + Duration::from_millis(9500)), 1000);
        assert_eq!(m.rate(t0 + Duration::from_secs(12)), 400);
        assert_eq!(m.rate(t0 + Duration::from_secs(60)), 0);
        assert_eq!(m.rate(t0), 0, "slots of the future are not counted");
        m.add(u64::MAX, t0 + Duration::from_secs(60));
        m.add(u64::MAX, t0 + Duration::from_secs(60));
        assert_eq!(m.rate(t0 + Duration::from_secs(60)), u64::MAX / 5);
    }
}

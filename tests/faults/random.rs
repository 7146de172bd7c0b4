//! A small seeded generator, so that a failing run can be told apart from
//! another and its seed printed.

use std::time::{SystemTime, UNIX_EPOCH};

/// xorshift64*: plenty for choosing moments and batch sizes.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `WASMCDC_FAULTS_SEED` when set, else from the clock; prints the seed.
    pub fn for_scenario(name: &str) -> Rng {
        let seed = std::env::var("WASMCDC_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("scenario {name}: seed {seed} (set WASMCDC_FAULTS_SEED to repeat it)");
        Rng::new(seed)
    }

    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// `n` points in `low..=high`, ascending, one in each of `n` equal slices of it.
    pub fn spread(&mut self, n: u64, low: u64, high: u64) -> Vec<u64> {
        let width = (high - low + 1) / n;
        (0..n)
            .map(|i| self.between(low + i * width, low + (i + 1) * width - 1))
            .collect()
    }

    /// `n` distinct points in `low..=high`, ascending.
    pub fn points(&mut self, n: usize, low: u64, high: u64) -> Vec<u64> {
        let mut points = Vec::with_capacity(n);
        while points.len() < n {
            let p = self.between(low, high);
            if !points.contains(&p) {
                points.push(p);
            }
        }
        points.sort_unstable();
        points
    }
}

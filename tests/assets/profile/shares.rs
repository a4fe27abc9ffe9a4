//! Spends fixed wall-clock shares of every 100 ms in three functions:
//! burn_sixty 60 %, burn_thirty 30 %, burn_ten 10 %, each reached from main
//! through four calls that are neither inlined nor tail calls. Built in
//! release mode without frame pointers: unwinding needs the CFI.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Inlined into each caller with its own constant, so the three callers
/// stay distinct functions (no identical code folding).
#[inline(always)]
fn burn(until: Instant, k: u64) -> u64 {
    let mut x = black_box(1u64);
    while Instant::now() < until {
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(k);
        }
        x = black_box(x);
    }
    x & 1
}

#[inline(never)]
fn burn_sixty(until: Instant) -> u64 {
    black_box(burn(until, 1442695040888963407)) + 1
}
#[inline(never)]
fn burn_thirty(until: Instant) -> u64 {
    black_box(burn(until, 1442695040888963409)) + 1
}
#[inline(never)]
fn burn_ten(until: Instant) -> u64 {
    black_box(burn(until, 1442695040888963411)) + 1
}

macro_rules! link {
    ($name:ident, $next:ident, $k:literal) => {
        #[inline(never)]
        fn $name(until: Instant) -> u64 {
            black_box($next(until)).wrapping_mul($k) + 1
        }
    };
}

link!(sixty_d, burn_sixty, 3);
link!(sixty_c, sixty_d, 5);
link!(sixty_b, sixty_c, 7);
link!(sixty_a, sixty_b, 11);
link!(thirty_d, burn_thirty, 13);
link!(thirty_c, thirty_d, 17);
link!(thirty_b, thirty_c, 19);
link!(thirty_a, thirty_b, 23);
link!(ten_d, burn_ten, 29);
link!(ten_c, ten_d, 31);
link!(ten_b, ten_c, 37);
link!(ten_a, ten_b, 41);

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut t = start;
    let mut acc = 0u64;
    while t < end {
        acc = acc.wrapping_add(sixty_a(t + Duration::from_millis(60)));
        acc = acc.wrapping_add(thirty_a(t + Duration::from_millis(90)));
        acc = acc.wrapping_add(ten_a(t + Duration::from_millis(100)));
        t += Duration::from_millis(100);
    }
    black_box(acc);
}

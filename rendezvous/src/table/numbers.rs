//! Drawing nameplate numbers: at random from a range sized to what is taken, so codes stay
//! short, nothing tells where the live nameplates are, and an `Allocate` reveals no frontier.

use std::collections::BTreeSet;

/// Smallest top of the allocation range: three-digit nameplates while few are taken.
pub const MIN_RANGE: u32 = 999;
/// The allocation range is this many times the numbers taken (open or cooling down), so a
/// random number in it is free at least 99 % of the time and a guess at a live nameplate
/// succeeds at most 1 % of the time.
pub const SPREAD: u32 = 100;
/// Draws before falling back to the next free number after the last draw (only reached when
/// `max_nameplate_number` caps the range close to what is taken).
const DRAWS: usize = 8;

/// The table's source of randomness: uniformly random 64-bit numbers. The node draws them
/// from the operating system's CSPRNG ([`Random::new`] with `rand::random`); tests use
/// [`Random::seeded`]. Nameplates drawn from a predictable source could be claimed as soon
/// as they are handed out, so never use a seeded one in a node.
pub struct Random(Box<dyn FnMut() -> u64 + Send>);

impl Random {
    /// Draws from `next`.
    pub fn new(next: impl FnMut() -> u64 + Send + 'static) -> Random {
        Random(Box::new(next))
    }

    /// A predictable generator (SplitMix64) for tests and simulations.
    pub fn seeded(seed: u64) -> Random {
        let mut state = seed;
        Random::new(move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        (self.0)()
    }

    /// A number in `1..=top` (`top` ≥ 1), uniform up to a bias below 2⁻³².
    fn below(&mut self, top: u32) -> u32 {
        let wide = u128::from((self.0)()) * u128::from(top);
        // `wide >> 64 < top`, so this fits and the result is at most `top`.
        1 + (wide >> 64) as u32
    }
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Random")
    }
}

/// The top of the range `Allocate` draws from when `taken` numbers are open or cooling down:
/// `max(MIN_RANGE, SPREAD × taken)`, capped at `max`.
pub fn range_top(taken: usize, max: u32) -> u32 {
    let spread = u32::try_from(taken).unwrap_or(u32::MAX).saturating_mul(SPREAD);
    spread.max(MIN_RANGE).min(max)
}

/// A number in `1..=top` that is not in `taken`: drawn at random, and when [`DRAWS`] draws
/// all hit taken numbers, the first free one after the last draw (wrapping to 1). `None`
/// when every number in the range is taken.
pub fn pick(random: &mut Random, taken: &BTreeSet<u32>, top: u32) -> Option<u32> {
    if top == 0 {
        return None;
    }
    let mut last = 1;
    for _ in 0..DRAWS {
        last = random.below(top);
        if !taken.contains(&last) {
            return Some(last);
        }
    }
    first_free(taken, last, top).or_else(|| first_free(taken, 1, last))
}

/// The smallest number in `from..=to` that is not in `taken`.
fn first_free(taken: &BTreeSet<u32>, from: u32, to: u32) -> Option<u32> {
    let mut candidate = from;
    for &n in taken.range(from..=to) {
        if n != candidate {
            break;
        }
        candidate = candidate.checked_add(1)?;
    }
    (candidate <= to).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_grows_with_what_is_taken() {
        assert_eq!(range_top(0, 999_999), 999);
        assert_eq!(range_top(9, 999_999), 999);
        assert_eq!(range_top(10, 999_999), 1_000);
        assert_eq!(range_top(5_000, 999_999), 500_000);
        assert_eq!(range_top(50_000, 999_999), 999_999);
        assert_eq!(range_top(0, 3), 3);
        assert_eq!(range_top(usize::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn draws_are_uniform_over_the_range_and_skip_taken_numbers() {
        let mut random = Random::seeded(7);
        let taken: BTreeSet<u32> = (1..=10).collect();
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            let n = pick(&mut random, &taken, 999).unwrap();
            assert!((11..=999).contains(&n), "{n}");
            counts[(n as usize - 1) * 4 / 999] += 1;
        }
        // Each quarter of the range gets its share (the first loses the 10 taken numbers).
        for (i, c) in counts.iter().enumerate() {
            assert!((9_000..=10_700).contains(c), "quarter {i}: {c}");
        }
    }

    #[test]
    fn a_nearly_full_range_falls_back_to_the_next_free_number() {
        let mut random = Random::seeded(1);
        let taken: BTreeSet<u32> = (1..=999).filter(|&n| n != 500).collect();
        assert_eq!(pick(&mut random, &taken, 999), Some(500));
        let taken: BTreeSet<u32> = (1..=999).collect();
        assert_eq!(pick(&mut random, &taken, 999), None);
        assert_eq!(pick(&mut random, &BTreeSet::new(), 0), None);
        // A draw of 0 every time starts at 1: the smallest free number.
        let mut zero = Random::new(|| 0);
        let taken: BTreeSet<u32> = [1, 2, 4].into();
        assert_eq!(pick(&mut zero, &taken, 999), Some(3));
    }
}

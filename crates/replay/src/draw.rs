//! Deterministic draws: the same log, configuration and round give the same replay, on
//! any machine, so a publisher can rerun it and a test can hold it to a result.

/// A 64-bit key for `parts` under `seed`: FNV-1a over the parts, then SplitMix64 to
/// spread it. Not for security; for reproducible sampling.
pub fn key(seed: u64, parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for part in parts {
        for byte in part.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    split_mix(hash)
}

fn split_mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from `key`.
pub fn unit(key: u64) -> f64 {
    // The top 53 bits, exactly representable.
    (key >> 11) as f64 / (1u64 << 53) as f64
}

/// A draw from Poisson(1) from `key`: how many times a decision counts in one bootstrap
/// round (a resample with replacement of a large log, one decision at a time).
pub fn poisson_one(key: u64) -> u64 {
    let u = unit(key);
    let mut k = 0u64;
    // P(X = k) = e^-1 / k!
    let mut probability = (-1f64).exp();
    let mut cumulative = probability;
    while u >= cumulative && k < 20 {
        k += 1;
        probability /= k as f64;
        cumulative += probability;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_its_boundaries() {
        assert_eq!(key(1, &["a", "b"]), key(1, &["a", "b"]));
        assert_ne!(key(1, &["a", "b"]), key(2, &["a", "b"]));
        assert_ne!(key(1, &["ab", "c"]), key(1, &["a", "bc"]));
    }

    #[test]
    fn poisson_weights_average_one() {
        let rounds = 20_000u64;
        let total: u64 = (0..rounds)
            .map(|i| poisson_one(key(i, &["decision"])))
            .sum();
        let mean = total as f64 / rounds as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean weight {mean}");
        let zeros = (0..rounds)
            .filter(|i| poisson_one(key(*i, &["decision"])) == 0)
            .count() as f64
            / rounds as f64;
        assert!((zeros - (-1f64).exp()).abs() < 0.02, "P(0) = {zeros}");
    }

    #[test]
    fn unit_draws_stay_in_range() {
        for i in 0..1_000 {
            let u = unit(key(i, &[]));
            assert!((0.0..1.0).contains(&u));
        }
        assert!(unit(u64::MAX) < 1.0);
    }
}

//! FNV-1a 64: the one cheap, stable hash of the project (lock keys, series keys, idempotency keys, the
//! test template's version). Stable across processes and releases, unlike `std`'s hasher.

/// FNV-1a 64 of the concatenation of `parts`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    /// The published test vectors of FNV-1a 64, and parts hash as their concatenation.
    #[test]
    fn known_values() {
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a(&[b"foo", b"", b"bar"]), fnv1a(&[b"foobar"]));
    }
}

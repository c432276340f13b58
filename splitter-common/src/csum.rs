//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624), on 16-bit words in
//! network order as read from the packet. Shared so the kernel and userspace tests compute the
//! very same values.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds `words` to a one's-complement accumulator.
#[inline(always)]
pub const fn sum_words<const N: usize>(mut acc: u32, words: &[u16; N]) -> u32 {
    let mut i = 0;
    while i < N {
        acc += words[i] as u32;
        i += 1;
    }
    acc
}

/// The checksum field after the covered words `old` became `new`: `~(~HC + ~m + m')`.
#[inline(always)]
pub const fn replace<const N: usize>(check: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    let mut acc = (!check) as u32;
    let mut i = 0;
    while i < N {
        acc += (!old[i]) as u32;
        acc += new[i] as u32;
        i += 1;
    }
    !fold(acc)
}

/// The one's-complement sum that turns a checksum covering `old` into one covering `new`
/// (`~m + m'` of RFC 1624, folded). A flow's NAT rewrites the same words every packet, so this is
/// computed once per flow and each packet only adds it with [`apply`].
#[inline(always)]
pub const fn delta<const N: usize>(old: &[u16; N], new: &[u16; N]) -> u16 {
    let mut acc = 0u32;
    let mut i = 0;
    while i < N {
        acc += (!old[i]) as u32;
        acc += new[i] as u32;
        i += 1;
    }
    fold(acc)
}

/// Adds two folded sums (one's-complement addition).
#[inline(always)]
pub const fn add(a: u16, b: u16) -> u16 {
    fold(a as u32 + b as u32)
}

/// The checksum field after adding a [`delta`]: the same value [`replace`] gives.
#[inline(always)]
pub const fn apply(check: u16, delta: u16) -> u16 {
    !fold((!check) as u32 + delta as u32)
}

/// A 16-byte address as eight network-order words.
#[inline(always)]
pub const fn words16(a: &[u8; 16]) -> [u16; 8] {
    let mut w = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        w[i] = u16::from_be_bytes([a[2 * i], a[2 * i + 1]]);
        i += 1;
    }
    w
}

/// The IPv4 address inside a v4-mapped 16-byte address as two words.
#[inline(always)]
pub const fn words4(mapped: &[u8; 16]) -> [u16; 2] {
    [
        u16::from_be_bytes([mapped[12], mapped[13]]),
        u16::from_be_bytes([mapped[14], mapped[15]]),
    ]
}

/// Checksum over a byte slice with an initial accumulator (for tests and full recomputes).
pub fn checksum_bytes(mut acc: u32, bytes: &[u8]) -> u16 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        // Keep the accumulator from overflowing on long inputs.
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += u16::from_be_bytes([*last, 0]) as u32;
    }
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_delta_matches_replace() {
        // A small deterministic generator: the edge words (0, 0xffff) come up often.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 => 0,
                1 => 0xffff,
                _ => (x >> 20) as u16,
            }
        };
        for _ in 0..200_000 {
            let check = next();
            let old = [next(), next(), next()];
            let new = [next(), next(), next()];
            let split = add(
                delta(&[old[0], old[1]], &[new[0], new[1]]),
                delta(&[old[2]], &[new[2]]),
            );
            let want = replace(check, &old, &new);
            // 0x0000 and 0xffff are the same one's-complement number; a receiver accepts both.
            let same = |a: u16, b: u16| a == b || (a | b == 0xffff && a & b == 0);
            assert!(
                same(apply(check, delta(&old, &new)), want),
                "{check:#x} {old:?} {new:?}"
            );
            assert!(
                same(apply(check, split), want),
                "{check:#x} {old:?} {new:?}"
            );
        }
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        // An IPv4 header with its checksum computed, then the destination changed.
        let mut hdr = [
            0x45u8, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 10, 0, 0, 1,
        ];
        let c = checksum_bytes(0, &hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum_bytes(0, &hdr), 0, "a correct header sums to zero");
        let old = [u16::from_be_bytes([10, 0]), u16::from_be_bytes([0, 1])];
        let new = [u16::from_be_bytes([10, 9]), u16::from_be_bytes([8, 7])];
        hdr[16..20].copy_from_slice(&[10, 9, 8, 7]);
        let updated = replace(c, &old, &new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(updated, checksum_bytes(0, &hdr));
    }

    #[test]
    fn words_split_addresses() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(words4(&a), [0x0a01, 0x0203]);
        assert_eq!(words16(&a)[5], 0xffff);
    }
}

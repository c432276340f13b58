//! The flow hash: one function for the kernel (which slot a new flow takes) and for userspace
//! (tests and tools predicting which backend a given 5-tuple reaches).

/// Fixed seed: every node must compute the same slot for the same flow, so that a flow that
/// moves between nodes (ECMP change) still selects the same backend.
pub const FLOW_HASH_SEED: u32 = 0x5b1d_c0de;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// MurmurHash3 (x86, 32-bit) over (src, dst, ports, proto). Addresses are 16 bytes (IPv4
/// v4-mapped), ports in host order.
#[inline(always)]
pub const fn flow_hash(
    src: &[u8; 16],
    dst: &[u8; 16],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 1));
    h = mix(h, word(src, 2));
    h = mix(h, word(src, 3));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 1));
    h = mix(h, word(dst, 2));
    h = mix(h, word(dst, 3));
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_moves_the_hash() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let base = flow_hash(&a, &b, 1000, 80, 6);
        assert_ne!(base, flow_hash(&b, &a, 1000, 80, 6));
        assert_ne!(base, flow_hash(&a, &b, 1001, 80, 6));
        assert_ne!(base, flow_hash(&a, &b, 1000, 81, 6));
        assert_ne!(base, flow_hash(&a, &b, 1000, 80, 17));
        assert_eq!(base, flow_hash(&a, &b, 1000, 80, 6));
    }

    #[test]
    fn source_ports_spread_evenly_over_slots() {
        // 40k client ports over 4 buckets: each within 3% of a quarter.
        let src = [9u8; 16];
        let dst = [7u8; 16];
        let mut buckets = [0u32; 4];
        for port in 20000..60000u16 {
            buckets[(flow_hash(&src, &dst, port, 80, 6) % 4) as usize] += 1;
        }
        for b in buckets {
            assert!((9700..=10300).contains(&b), "{buckets:?}");
        }
    }
}

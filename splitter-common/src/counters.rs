//! Counter keys and values of the packet parser.

/// Why the parser stopped (or that it did not): the index into the `PARSE_STATS` per-CPU array.
///
/// Stored as `u32` indices, not a Rust enum in a map, so every value the kernel could write is
/// one userspace can read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParseOutcome {
    /// IPv4 or IPv6 with a complete TCP or UDP header, not for an L4 VIP. VIP traffic is counted
    /// per route and backend instead (`ROUTE_STATS`, `BACKEND_STATS`): one counter update less on
    /// the forwarding path.
    Ok = 0,
    /// The frame ended inside a header it claimed to have.
    Truncated = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp = 2,
    /// IP, but the next protocol is not TCP or UDP (ICMP, IPv6 extension headers, ...).
    OtherL4 = 3,
    /// An IPv4 fragment other than the first: it carries no L4 header.
    Fragment = 4,
    /// An IP header that contradicts itself (IPv4 IHL below 5, version field not matching the
    /// EtherType).
    Malformed = 5,
    /// Parsed fine, but `DEST_STATS` was full so the destination was not counted.
    DestTableFull = 6,
}

impl ParseOutcome {
    /// Number of outcomes: the size of the `PARSE_STATS` array.
    pub const COUNT: u32 = 7;

    pub const ALL: [ParseOutcome; Self::COUNT as usize] = [
        ParseOutcome::Ok,
        ParseOutcome::Truncated,
        ParseOutcome::NonIp,
        ParseOutcome::OtherL4,
        ParseOutcome::Fragment,
        ParseOutcome::Malformed,
        ParseOutcome::DestTableFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ParseOutcome::Ok => "ok",
            ParseOutcome::Truncated => "truncated",
            ParseOutcome::NonIp => "non_ip",
            ParseOutcome::OtherL4 => "other_l4",
            ParseOutcome::Fragment => "fragment",
            ParseOutcome::Malformed => "malformed",
            ParseOutcome::DestTableFull => "dest_table_full",
        }
    }
}

/// IANA protocol numbers the data path understands.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of `DEST_STATS`: a destination as the packet named it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// IPv6 address, or an IPv4 address mapped into `::ffff:0:0/96`.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    /// IANA protocol number ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `DEST_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestStats {
    pub packets: u64,
    /// Frame bytes as XDP saw them (Ethernet header included).
    pub bytes: u64,
}

impl DestKey {
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12] = addr[0];
        mapped[13] = addr[1];
        mapped[14] = addr[2];
        mapped[15] = addr[3];
        DestKey {
            addr: mapped,
            port,
            proto,
            _pad: 0,
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        DestKey {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::DestKey {}
    // SAFETY: as for DestKey.
    unsafe impl aya::Pod for super::DestStats {}
}

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn dest_key_layout_is_pinned() {
        assert_eq!(size_of::<DestKey>(), 20);
        assert_eq!(align_of::<DestKey>(), 2);
        assert_eq!(offset_of!(DestKey, addr), 0);
        assert_eq!(offset_of!(DestKey, port), 16);
        assert_eq!(offset_of!(DestKey, proto), 18);
        assert_eq!(offset_of!(DestKey, _pad), 19);
    }

    #[test]
    fn dest_stats_layout_is_pinned() {
        assert_eq!(size_of::<DestStats>(), 16);
        assert_eq!(align_of::<DestStats>(), 8);
        assert_eq!(offset_of!(DestStats, packets), 0);
        assert_eq!(offset_of!(DestStats, bytes), 8);
    }

    #[test]
    fn outcomes_are_dense_indices() {
        for (i, o) in ParseOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as u32, i as u32);
        }
    }

    #[test]
    fn v4_is_mapped() {
        let k = DestKey::v4([10, 0, 0, 1], 80, IPPROTO_TCP);
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.addr[12..], &[10, 0, 0, 1]);
    }
}

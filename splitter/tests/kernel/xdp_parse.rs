//! The XDP parser under BPF_PROG_TEST_RUN: crafted frames in, verdict and counters out.
//! Root only (loads into the real kernel); skips with a reason elsewhere, never under CI.

use crate::support::*;
use splitter::dataplane::ebpf::{self, KernelObject, ParseCounts};
use splitter_common::{
    DestKey, DestStats, ParseOutcome,
    counters::{IPPROTO_TCP, IPPROTO_UDP},
};

fn load() -> KernelObject {
    ebpf::load_object(None).expect("load the XDP object into the kernel")
}

/// Runs `frame` and asserts XDP_PASS and that exactly `outcome` moved, by one.
fn assert_outcome(obj: &mut KernelObject, frame: &[u8], outcome: ParseOutcome, what: &str) {
    let before = parse_counts(obj);
    let verdict = run_xdp(obj, frame).unwrap_or_else(|e| panic!("{what}: test_run failed: {e}"));
    assert_eq!(verdict, XDP_PASS, "{what}: verdict");
    let after = parse_counts(obj);
    let mut expected = before;
    expected.0[outcome as usize] += 1;
    assert_eq!(after, expected, "{what}: only {outcome:?} may move");
}

fn dest(obj: &KernelObject, key: &DestKey) -> Option<DestStats> {
    dest_counts(obj)
        .into_iter()
        .find(|d| d.key == *key)
        .map(|d| d.stats)
}

#[test]
fn ipv4_tcp_counts_ok_and_destination() {
    if !testbed::require_root("ipv4_tcp_counts_ok_and_destination") {
        return;
    }
    let mut obj = load();
    let frame = ipv4_tcp([10, 1, 2, 3], 80, b"hello");
    assert_outcome(&mut obj, &frame, ParseOutcome::Ok, "ipv4/tcp");
    assert_outcome(&mut obj, &frame, ParseOutcome::Ok, "ipv4/tcp again");
    let key = DestKey::v4([10, 1, 2, 3], 80, IPPROTO_TCP);
    assert_eq!(
        dest(&obj, &key),
        Some(DestStats {
            packets: 2,
            bytes: 2 * frame.len() as u64
        })
    );
    assert_eq!(
        dest_counts(&obj).len(),
        1,
        "no other destination was counted"
    );
}

#[test]
fn ipv6_udp_counts_ok_and_destination() {
    if !testbed::require_root("ipv6_udp_counts_ok_and_destination") {
        return;
    }
    let mut obj = load();
    let dst = v6([0xfd00, 0, 0, 0, 0, 0, 0, 5]);
    let frame = ipv6_udp(dst, 53, b"q");
    assert_outcome(&mut obj, &frame, ParseOutcome::Ok, "ipv6/udp");
    let key = DestKey::v6(dst, 53, IPPROTO_UDP);
    assert_eq!(
        dest(&obj, &key),
        Some(DestStats {
            packets: 1,
            bytes: frame.len() as u64
        })
    );
}

#[test]
fn arp_is_non_ip_and_counts_no_destination() {
    if !testbed::require_root("arp_is_non_ip_and_counts_no_destination") {
        return;
    }
    let mut obj = load();
    assert_outcome(&mut obj, &arp_request(), ParseOutcome::NonIp, "arp");
    assert!(dest_counts(&obj).is_empty());
}

#[test]
fn vlan_tagged_frames_are_parsed_through_the_tag() {
    if !testbed::require_root("vlan_tagged_frames_are_parsed_through_the_tag") {
        return;
    }
    let mut obj = load();
    let dst6 = v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x42]);
    assert_outcome(
        &mut obj,
        &vlan_ipv6_udp(100, dst6, 5353, b"x"),
        ParseOutcome::Ok,
        "vlan ipv6/udp",
    );
    assert_outcome(
        &mut obj,
        &vlan_ipv4_tcp(7, [10, 9, 8, 7], 443),
        ParseOutcome::Ok,
        "vlan ipv4/tcp",
    );
    let mut keys: Vec<DestKey> = dest_counts(&obj).into_iter().map(|d| d.key).collect();
    keys.sort_by_key(|k| k.port);
    assert_eq!(
        keys,
        vec![
            DestKey::v4([10, 9, 8, 7], 443, IPPROTO_TCP),
            DestKey::v6(dst6, 5353, IPPROTO_UDP)
        ]
    );
}

#[test]
fn other_l4_fragments_and_malformed_headers() {
    if !testbed::require_root("other_l4_fragments_and_malformed_headers") {
        return;
    }
    let mut obj = load();
    let base = ipv4_tcp([10, 0, 0, 1], 80, &[]);
    const IP: usize = 14;

    let mut icmp = base.clone();
    icmp[IP + 9] = 1; // protocol ICMP
    assert_outcome(&mut obj, &icmp, ParseOutcome::OtherL4, "ipv4/icmp");

    let mut fragment = base.clone();
    fragment[IP + 6] = 0x00;
    fragment[IP + 7] = 0x10; // fragment offset 16 (x8 bytes), not the first fragment
    assert_outcome(
        &mut obj,
        &fragment,
        ParseOutcome::Fragment,
        "ipv4 later fragment",
    );

    let mut first_fragment = base.clone();
    first_fragment[IP + 6] = 0x20; // MF set, offset 0: still carries the TCP header
    assert_outcome(
        &mut obj,
        &first_fragment,
        ParseOutcome::Ok,
        "ipv4 first fragment",
    );

    let mut short_ihl = base.clone();
    short_ihl[IP] = 0x44; // IHL 4 (16 bytes) is below the minimum
    assert_outcome(&mut obj, &short_ihl, ParseOutcome::Malformed, "ipv4 ihl 4");

    let mut wrong_version = base.clone();
    wrong_version[IP] = 0x65;
    assert_outcome(
        &mut obj,
        &wrong_version,
        ParseOutcome::Malformed,
        "version 6 under EtherType IPv4",
    );

    // IHL 15 claims 60 header bytes; the 40-byte frame tail cannot hold them.
    let mut long_ihl = base.clone();
    long_ihl[IP] = 0x4f;
    assert_outcome(
        &mut obj,
        &long_ihl,
        ParseOutcome::Truncated,
        "ipv4 ihl beyond the frame",
    );

    // IPv4 options (IHL 6): the TCP header is found after them.
    let mut with_options = base[..IP + 20].to_vec();
    with_options[IP] = 0x46;
    with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    with_options.extend_from_slice(&base[IP + 20..]);
    assert_outcome(
        &mut obj,
        &with_options,
        ParseOutcome::Ok,
        "ipv4 with options",
    );
    assert!(
        dest_counts(&obj)
            .iter()
            .any(|d| d.key == DestKey::v4([10, 0, 0, 1], 80, IPPROTO_TCP)),
        "the port after the options was read"
    );
}

/// The outcome the parser must report for the first `len` bytes of a frame whose headers end at
/// the given offsets (each header is needed whole).
fn expected_for_prefix(len: usize, header_ends: &[usize]) -> ParseOutcome {
    if header_ends.iter().all(|&end| len >= end) {
        ParseOutcome::Ok
    } else {
        ParseOutcome::Truncated
    }
}

#[test]
fn every_truncation_up_to_64_bytes_passes_and_counts_once() {
    if !testbed::require_root("every_truncation_up_to_64_bytes_passes_and_counts_once") {
        return;
    }
    let mut obj = load();
    // IPv4/TCP with 10 payload bytes: Ethernet ends at 14, IPv4 at 34, TCP at 54; 64 bytes total.
    let v4 = ipv4_tcp([10, 0, 0, 2], 8080, &[0xaa; 10]);
    assert_eq!(v4.len(), 64);
    // VLAN + IPv6/UDP: tag ends at 18, IPv6 at 58, UDP at 66.
    let v6f = vlan_ipv6_udp(5, v6([0xfd00, 0, 0, 0, 0, 0, 0, 2]), 53, &[]);
    assert_eq!(v6f.len(), 66);

    for (name, frame, ends) in [
        ("ipv4/tcp", &v4, &[14usize, 34, 54][..]),
        ("vlan/ipv6/udp", &v6f, &[18, 58, 66][..]),
    ] {
        for len in 0..=64usize {
            let prefix = &frame[..len];
            if len < 14 {
                // The kernel never hands XDP less than an Ethernet header; test_run refuses too.
                let before = parse_counts(&obj);
                assert!(
                    run_xdp(&mut obj, prefix).is_err(),
                    "{name}: {len}-byte frame must be refused by the kernel"
                );
                assert_eq!(
                    parse_counts(&obj),
                    before,
                    "{name}: a refused frame counts nothing"
                );
                continue;
            }
            let expected = expected_for_prefix(len, ends);
            assert_outcome(
                &mut obj,
                prefix,
                expected,
                &format!("{name} cut to {len} bytes"),
            );
        }
    }
    let ParseCounts(c) = parse_counts(&obj);
    assert_eq!(
        c.iter().sum::<u64>(),
        2 * 51,
        "every run from 14 to 64 bytes counted exactly once"
    );
}

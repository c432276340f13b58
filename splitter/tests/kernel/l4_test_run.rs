//! The L4 data path under BPF_PROG_TEST_RUN: frames in, frames and verdicts out, map effects.
//! Tables are programmed through the agent's real actuator.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{l4::*, *};
use splitter::dataplane::ebpf::{self, KernelObject, L4Actuator, L4Proto, L4RouteProgram};
use splitter_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{FlowStats, L4Event, XDP_MARK_BOUNCE},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

struct Rig {
    obj: KernelObject,
    act: L4Actuator,
}

fn rig() -> Rig {
    let mut obj = ebpf::load_object(None).expect("load");
    let act = L4Actuator::new(&mut obj).expect("actuator");
    Rig { obj, act }
}

fn route(
    key: &str,
    vips: &[(SocketAddr, L4Proto)],
    table: Vec<Option<SocketAddr>>,
) -> L4RouteProgram {
    L4RouteProgram {
        key: key.into(),
        vips: vips.to_vec(),
        table,
        remote: Default::default(),
        dedicated: Default::default(),
    }
}

/// Seven slots (a small prime, as Maglev wants) alternating between two backends.
fn two_backend_table(a: SocketAddr, b: SocketAddr) -> Vec<Option<SocketAddr>> {
    (0..7)
        .map(|i| Some(if i % 2 == 0 { a } else { b }))
        .collect()
}

fn l4_events(obj: &KernelObject, e: L4Event) -> u64 {
    use aya::maps::{MapData, PerCpuArray};
    let m = obj
        .ebpf
        .map(splitter_common::l4::L4_DROPS)
        .expect("L4_DROPS");
    let a = PerCpuArray::<&MapData, u64>::try_from(m).expect("per-cpu array");
    a.get(&(e as u32), 0).expect("get").iter().sum()
}

fn route_stats(obj: &KernelObject, route_id: u32) -> FlowStats {
    use aya::maps::{MapData, PerCpuArray};
    let m = obj
        .ebpf
        .map(splitter_common::l4::ROUTE_STATS)
        .expect("ROUTE_STATS");
    let a = PerCpuArray::<&MapData, FlowStats>::try_from(m).expect("per-cpu array");
    a.get(&route_id, 0)
        .expect("get")
        .iter()
        .fold(FlowStats::default(), |acc, s| FlowStats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            new_flows: acc.new_flows + s.new_flows,
            rejects: acc.rejects + s.rejects,
        })
}

macro_rules! root_only {
    ($name:literal) => {
        if !testbed::require_root($name) {
            return;
        }
    };
}

#[test]
fn new_flows_reach_the_predicted_backend_v4_v6_tcp_udp() {
    root_only!("new_flows_reach_the_predicted_backend_v4_v6_tcp_udp");
    let mut r = rig();
    let cases = [
        (
            sa("10.0.0.100:80"),
            L4Proto::Tcp,
            sa("10.1.0.1:8080"),
            sa("10.1.0.2:8080"),
            sa("192.0.2.10:40000"),
            Seg::Syn,
        ),
        (
            sa("10.0.0.100:53"),
            L4Proto::Udp,
            sa("10.1.0.1:5353"),
            sa("10.1.0.2:5353"),
            sa("192.0.2.10:40001"),
            Seg::Udp,
        ),
        (
            sa("[fd00::100]:80"),
            L4Proto::Tcp,
            sa("[fd01::1]:8080"),
            sa("[fd01::2]:8080"),
            sa("[2001:db8::10]:40002"),
            Seg::Syn,
        ),
        (
            sa("[fd00::100]:53"),
            L4Proto::Udp,
            sa("[fd01::1]:5353"),
            sa("[fd01::2]:5353"),
            sa("[2001:db8::10]:40003"),
            Seg::Udp,
        ),
    ];
    let programs: Vec<L4RouteProgram> = cases
        .iter()
        .enumerate()
        .map(|(i, (vip, proto, a, b, _, _))| {
            route(
                &format!("r{i}"),
                &[(*vip, *proto)],
                two_backend_table(*a, *b),
            )
        })
        .collect();
    r.act.apply(&programs).expect("apply");

    for (i, (vip, proto, a, b, client, seg)) in cases.iter().enumerate() {
        // Many clients, so both backends are hit and every prediction is checked.
        let mut seen = std::collections::BTreeSet::new();
        for port_offset in 0..16u16 {
            let client = SocketAddr::new(client.ip(), client.port() + 100 * port_offset);
            let table = two_backend_table(*a, *b);
            let want = predicted(&table, client, *vip, proto.number()).expect("slot");
            let v = xdp(&mut r.obj, &frame(client, *vip, *seg, b"hello"));
            assert_eq!(v.action, XDP_PASS, "case {i}");
            let out = inspect(&v.out);
            assert_eq!(out.dst, want, "case {i}: DNAT to the predicted backend");
            assert_eq!(
                out.src, client,
                "case {i}: the backend sees the real client"
            );
            seen.insert(want);
        }
        assert_eq!(
            seen.len(),
            2,
            "case {i}: both backends chosen across clients"
        );
        let id = r.act.route_id(&format!("r{i}")).expect("route id");
        assert_eq!(
            route_stats(&r.obj, id).new_flows,
            16,
            "case {i}: sixteen new flows counted"
        );
    }
    let _ = (IPPROTO_TCP, IPPROTO_UDP);
}

#[test]
fn established_flow_stays_when_the_table_changes() {
    root_only!("established_flow_stays_when_the_table_changes");
    let mut r = rig();
    let vip = sa("10.0.0.100:80");
    let (a, b) = (sa("10.1.0.1:8080"), sa("10.1.0.2:8080"));
    let client = sa("192.0.2.20:41000");
    r.act
        .apply(&[route("web", &[(vip, L4Proto::Tcp)], vec![Some(a); 7])])
        .expect("apply A");
    assert_eq!(
        inspect(&xdp(&mut r.obj, &frame(client, vip, Seg::Syn, &[])).out).dst,
        a
    );

    // All new connections now go to b; the established one must not move.
    r.act
        .apply(&[route("web", &[(vip, L4Proto::Tcp)], vec![Some(b); 7])])
        .expect("apply B");
    let v = xdp(&mut r.obj, &frame(client, vip, Seg::Ack, b"data"));
    assert_eq!(v.action, XDP_PASS);
    assert_eq!(
        inspect(&v.out).dst,
        a,
        "established flow stays on its backend"
    );
    let fresh = sa("192.0.2.20:41001");
    assert_eq!(
        inspect(&xdp(&mut r.obj, &frame(fresh, vip, Seg::Syn, &[])).out).dst,
        b,
        "new flow uses the new table"
    );

    // a left every table: DRAINING, its flow still served.
    let v = xdp(&mut r.obj, &frame(client, vip, Seg::Ack, b"more"));
    assert_eq!(
        inspect(&v.out).dst,
        a,
        "draining backend keeps its established flow"
    );
}

#[test]
fn closed_flows_of_a_draining_backend_are_reaped_and_its_id_freed() {
    root_only!("closed_flows_of_a_draining_backend_are_reaped_and_its_id_freed");
    let mut r = rig();
    let (web, api) = (sa("10.0.0.100:80"), sa("10.0.0.101:80"));
    let (a, c, b) = (
        sa("10.1.0.1:8080"),
        sa("10.1.0.3:8080"),
        sa("10.1.0.2:8080"),
    );
    let (c1, c2, c3) = (
        sa("192.0.2.40:43000"),
        sa("192.0.2.40:43001"),
        sa("192.0.2.40:43002"),
    );
    r.act
        .apply(&[
            route("web", &[(web, L4Proto::Tcp)], vec![Some(a); 7]),
            route("api", &[(api, L4Proto::Tcp)], vec![Some(c); 7]),
        ])
        .expect("apply a, c");
    for (client, vip, backend) in [(c1, web, a), (c2, web, a), (c3, api, c)] {
        let v = xdp(&mut r.obj, &frame(client, vip, Seg::Syn, &[]));
        assert_eq!(inspect(&v.out).dst, backend);
        confirm(&mut r.obj, client, vip, backend, None);
    }
    let (a_id, c_id) = (r.act.backend_id(a), r.act.backend_id(c));
    assert!(a_id.is_some() && c_id.is_some());

    // Both routes move to b: a and c drain, their flows still tracked.
    r.act
        .apply(&[
            route("web", &[(web, L4Proto::Tcp)], vec![Some(b); 7]),
            route("api", &[(api, L4Proto::Tcp)], vec![Some(b); 7]),
        ])
        .expect("apply b");
    let grace = Duration::from_secs(120);
    let t0 = Instant::now();
    let s = r.act.sweep(t0, grace).expect("sweep");
    assert_eq!((s.flows_reaped, s.backends_freed, s.draining), (0, 0, 2));

    // c1's client closes (FIN through XDP), c2's backend closes (FIN through TC); c3 stays open.
    let v = xdp(&mut r.obj, &frame(c1, web, Seg::Fin, &[]));
    assert_eq!(inspect(&v.out).dst, a, "a FIN still reaches its backend");
    let v = tc(&mut r.obj, &frame(a, c2, Seg::Fin, &[]));
    assert_eq!(
        inspect(&v.out).src,
        web,
        "the backend's FIN leaves as the VIP"
    );
    let s = r
        .act
        .sweep(t0 + Duration::from_secs(1), grace)
        .expect("sweep");
    assert_eq!(
        (s.flows_reaped, s.backends_freed),
        (0, 0),
        "closing flows keep their entries through the grace"
    );
    let v = xdp(&mut r.obj, &frame(c1, web, Seg::Ack, &[]));
    assert_eq!(inspect(&v.out).dst, a, "the last ACK still finds the flow");

    let s = r
        .act
        .sweep(t0 + Duration::from_secs(1) + grace, grace)
        .expect("sweep");
    assert_eq!(
        (s.flows_reaped, s.backends_freed, s.draining),
        (2, 1, 1),
        "a's two closed flows reaped and a freed; c keeps its open flow"
    );
    assert_eq!(r.act.backend_id(a), None);
    assert_eq!(r.act.backend_id(c), c_id);
    let v = xdp(&mut r.obj, &frame(c3, api, Seg::Ack, b"still"));
    assert_eq!(
        inspect(&v.out).dst,
        c,
        "the open flow to the draining backend is kept"
    );
    // a's id is free: the next backend takes it.
    let d = sa("10.1.0.4:8080");
    r.act
        .apply(&[
            route("web", &[(web, L4Proto::Tcp)], vec![Some(b); 7]),
            route("api", &[(api, L4Proto::Tcp)], vec![Some(d); 7]),
        ])
        .expect("apply d");
    assert_eq!(r.act.backend_id(d), a_id, "the freed id is reused");
}

#[test]
fn replies_leave_with_the_vip_as_source() {
    root_only!("replies_leave_with_the_vip_as_source");
    let mut r = rig();
    for (vip, backend, client, seg) in [
        (
            sa("10.0.0.100:80"),
            sa("10.1.0.1:8080"),
            sa("192.0.2.30:42000"),
            Seg::Syn,
        ),
        (
            sa("10.0.0.100:53"),
            sa("10.1.0.1:5353"),
            sa("192.0.2.30:42001"),
            Seg::Udp,
        ),
        (
            sa("[fd00::100]:80"),
            sa("[fd01::1]:8080"),
            sa("[2001:db8::30]:42002"),
            Seg::Syn,
        ),
    ] {
        let proto = if matches!(seg, Seg::Udp) {
            L4Proto::Udp
        } else {
            L4Proto::Tcp
        };
        r.act
            .apply(&[route("svc", &[(vip, proto)], vec![Some(backend); 7])])
            .expect("apply");
        assert_eq!(
            xdp(&mut r.obj, &frame(client, vip, seg, b"q")).action,
            XDP_PASS
        );
        let reply_seg = if matches!(seg, Seg::Udp) {
            Seg::Udp
        } else {
            Seg::Ack
        };
        let v = tc(&mut r.obj, &frame(backend, client, reply_seg, b"answer"));
        assert_eq!(
            v.action,
            u32::MAX,
            "TCX_NEXT (-1): the next program sees the reply"
        );
        let out = inspect(&v.out);
        assert_eq!(
            (out.src, out.dst),
            (vip, client),
            "reply SNAT back to the VIP"
        );

        // A packet from the backend to a client it has no tracked flow with is left alone.
        let stranger = SocketAddr::new(client.ip(), 9);
        let untouched = frame(backend, stranger, reply_seg, b"x");
        assert_eq!(tc(&mut r.obj, &untouched).out, untouched);
    }
}

#[test]
fn reject_share_answers_syn_with_rst_and_drops_udp() {
    root_only!("reject_share_answers_syn_with_rst_and_drops_udp");
    let mut r = rig();
    let vip4 = sa("10.0.0.100:80");
    let vip6 = sa("[fd00::100]:80");
    let udp = sa("10.0.0.100:53");
    r.act
        .apply(&[
            route(
                "v4",
                &[(vip4, L4Proto::Tcp), (udp, L4Proto::Udp)],
                vec![None; 7],
            ),
            route("v6", &[(vip6, L4Proto::Tcp)], vec![None; 7]),
        ])
        .expect("apply");
    for (client, vip, len) in [
        (sa("192.0.2.40:43000"), vip4, 54),
        (sa("[2001:db8::40]:43000"), vip6, 74),
    ] {
        let syn = frame(client, vip, Seg::Syn, &[]);
        let v = xdp(&mut r.obj, &syn);
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, Some(XDP_MARK_BOUNCE)),
            "RST passed to TC ingress, marked to go back out the way it came"
        );
        assert_eq!(v.out.len(), len, "trimmed to headers");
        assert_eq!(&v.out[0..6], &SRC_MAC, "MACs swapped");
        let out = inspect(&v.out);
        assert_eq!((out.src, out.dst), (vip, client));
        assert!(out.rst && out.ack && !out.syn, "{out:?}");
        assert_eq!(out.ack_number, 1001, "acknowledges the SYN (seq 1000 + 1)");
    }
    assert_eq!(l4_events(&r.obj, L4Event::RejectRst), 2);
    let v = xdp(
        &mut r.obj,
        &frame(sa("192.0.2.40:43001"), udp, Seg::Udp, b"q"),
    );
    assert_eq!(v.action, XDP_DROP);
    assert_eq!(l4_events(&r.obj, L4Event::RejectDrop), 1);
    let id = r.act.route_id("v4").expect("route");
    assert_eq!(route_stats(&r.obj, id).rejects, 2);
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() {
    root_only!("traffic_not_for_a_vip_passes_untouched");
    let mut r = rig();
    r.act
        .apply(&[route(
            "web",
            &[(sa("10.0.0.100:80"), L4Proto::Tcp)],
            vec![Some(sa("10.1.0.1:8080")); 7],
        )])
        .expect("apply");
    for f in [
        frame(sa("192.0.2.1:1234"), sa("10.0.0.100:81"), Seg::Syn, &[]),
        frame(sa("192.0.2.1:1234"), sa("10.0.0.101:80"), Seg::Syn, &[]),
        frame(
            sa("192.0.2.1:1234"),
            sa("10.0.0.100:80"),
            Seg::Udp,
            b"udp, same port",
        ),
        arp_request(),
    ] {
        let v = xdp(&mut r.obj, &f);
        assert_eq!((v.action, &v.out), (XDP_PASS, &f));
    }
}

/// A tiny deterministic generator, so a failure reproduces.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncated_and_random_frames_only_pass_or_drop() {
    root_only!("truncated_and_random_frames_only_pass_or_drop");
    let mut r = rig();
    let vip = sa("10.0.0.100:80");
    r.act
        .apply(&[route(
            "web",
            &[(vip, L4Proto::Tcp), (sa("10.0.0.100:53"), L4Proto::Udp)],
            vec![Some(sa("10.1.0.1:8080")); 7],
        )])
        .expect("apply");
    let syn = frame(sa("192.0.2.50:44000"), vip, Seg::Syn, &[0x55; 80]);
    for len in 14..=128usize.min(syn.len()) {
        let v = xdp(&mut r.obj, &syn[..len]);
        assert!(
            v.action == XDP_PASS || v.action == XDP_DROP,
            "len {len}: action {}",
            v.action
        );
    }
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    for i in 0..3000 {
        let len = 14 + (rng.next() % 115) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Every third frame keeps a valid VIP header prefix, so the L4 path itself is fuzzed.
        if i % 3 == 0 {
            let n = len.min(syn.len()).min(14 + (rng.next() % 60) as usize);
            f[..n].copy_from_slice(&syn[..n]);
        }
        let v = xdp(&mut r.obj, &f);
        assert!(
            v.action == XDP_PASS || v.action == XDP_DROP,
            "frame {i}: action {}: {f:02x?}",
            v.action
        );
    }
}

/// Generation `g` of the flip test: M alternates between two primes and slot `s` names backend
/// `(7g + s) mod N`, so a packet that combined one generation's size and active half with another
/// generation's slots lands on a backend no single generation would give it.
fn flip_table(backends: &[SocketAddr], g: usize) -> Vec<Option<SocketAddr>> {
    let m = if g.is_multiple_of(2) { 251 } else { 241 };
    (0..m)
        .map(|s| Some(backends[(7 * g + s) % backends.len()]))
        .collect()
}

#[test]
fn table_flips_under_load_never_show_a_mix() {
    root_only!("table_flips_under_load_never_show_a_mix");
    let mut obj = ebpf::load_object(None).expect("load");
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    let vip = sa("10.0.0.100:80");
    let backends: Vec<SocketAddr> = (1..=16).map(|i| sa(&format!("10.1.0.{i}:8080"))).collect();
    act.apply(&[route(
        "flip",
        &[(vip, L4Proto::Tcp)],
        flip_table(&backends, 0),
    )])
    .expect("gen 0");
    // `staging` is set before a generation is written, `published` after it is live.
    let staging = Arc::new(AtomicU32::new(0));
    let published = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (staging, published, stop, backends) = (
            staging.clone(),
            published.clone(),
            stop.clone(),
            backends.clone(),
        );
        std::thread::spawn(move || {
            let mut g = 0usize;
            while !stop.load(Ordering::SeqCst) {
                g += 1;
                staging.store(g as u32, Ordering::SeqCst);
                act.apply(&[route(
                    "flip",
                    &[(vip, L4Proto::Tcp)],
                    flip_table(&backends, g),
                )])
                .expect("publish");
                published.store(g as u32, Ordering::SeqCst);
            }
            g
        })
    };
    let mut moved_during_run = 0;
    for i in 0..3000u32 {
        let live_before = published.load(Ordering::SeqCst) as usize;
        let client = SocketAddr::new("192.0.2.60".parse().expect("ip"), 1024 + (i % 60000) as u16);
        let v = xdp(&mut obj, &frame(client, vip, Seg::Syn, &[]));
        let staged_after = staging.load(Ordering::SeqCst) as usize;
        let dst = inspect(&v.out).dst;
        let explained = (live_before..=staged_after)
            .any(|g| predicted(&flip_table(&backends, g), client, vip, IPPROTO_TCP) == Some(dst));
        assert!(
            explained,
            "packet {i} reached {dst}: no single generation in {live_before}..={staged_after} sends it there"
        );
        moved_during_run += (staged_after > live_before) as u32;
    }
    stop.store(true, Ordering::SeqCst);
    let gens = writer.join().expect("writer");
    assert!(gens > 10, "the writer published only {gens} generations");
    assert!(
        moved_during_run > 100,
        "only {moved_during_run} packets raced a publish: the test did not exercise flips"
    );
}

#[test]
fn a_syn_reusing_a_closed_connections_tuple_takes_the_live_table() {
    root_only!("a_syn_reusing_a_closed_connections_tuple_takes_the_live_table");
    let mut r = rig();
    let vip = sa("10.0.0.100:80");
    let (a, b) = (sa("10.1.0.1:8080"), sa("10.1.0.2:8080"));
    let (closed, open) = (sa("192.0.2.60:45000"), sa("192.0.2.60:45001"));
    r.act
        .apply(&[route("web", &[(vip, L4Proto::Tcp)], vec![Some(a); 7])])
        .expect("apply a");
    for client in [closed, open] {
        assert_eq!(
            inspect(&xdp(&mut r.obj, &frame(client, vip, Seg::Syn, &[])).out).dst,
            a
        );
        confirm(&mut r.obj, client, vip, a, None);
    }
    // One connection closes; then a leaves the table and drains.
    xdp(&mut r.obj, &frame(closed, vip, Seg::Fin, &[]));
    r.act
        .apply(&[route("web", &[(vip, L4Proto::Tcp)], vec![Some(b); 7])])
        .expect("apply b");

    // The client opens a new connection from the closed one's port: a new flow, to b.
    let v = xdp(&mut r.obj, &frame(closed, vip, Seg::Syn, &[]));
    assert_eq!(
        inspect(&v.out).dst,
        b,
        "the reused tuple takes the live table"
    );
    let v = xdp(&mut r.obj, &frame(closed, vip, Seg::Ack, &[]));
    assert_eq!(
        inspect(&v.out).dst,
        b,
        "and its next packets follow it there"
    );
    // The connection that is still open stays with its draining backend.
    let v = xdp(&mut r.obj, &frame(open, vip, Seg::Ack, b"more"));
    assert_eq!(
        inspect(&v.out).dst,
        a,
        "an open connection keeps its backend"
    );
}

/// The reply key (backend -> client) does not name the VIP: a client that closes a connection
/// to one VIP and opens one from the same port to another VIP with the same backend makes a
/// flow whose replies have the old one's key. The new flow must own it, or its SYN-ACK would
/// leave with the old VIP as source and the connection would never open.
#[test]
fn a_new_flow_takes_over_the_reply_key_of_a_closed_flow_to_another_vip() {
    root_only!("a_new_flow_takes_over_the_reply_key_of_a_closed_flow_to_another_vip");
    let mut r = rig();
    for (first, second, backend, client) in [
        (
            sa("10.0.0.100:81"),
            sa("10.0.0.100:80"),
            sa("10.1.0.1:8080"),
            sa("192.0.2.70:45000"),
        ),
        (
            sa("[fd00::100]:81"),
            sa("[fd00::101]:80"),
            sa("[fd01::1]:8080"),
            sa("[2001:db8::70]:45000"),
        ),
    ] {
        r.act
            .apply(&[
                route("one", &[(first, L4Proto::Tcp)], vec![Some(backend); 7]),
                route("two", &[(second, L4Proto::Tcp)], vec![Some(backend); 7]),
            ])
            .expect("apply");
        xdp(&mut r.obj, &frame(client, first, Seg::Syn, &[]));
        confirm(&mut r.obj, client, first, backend, None);
        xdp(&mut r.obj, &frame(client, first, Seg::Fin, &[]));
        tc(&mut r.obj, &frame(backend, client, Seg::Fin, &[]));

        // The same client port, another VIP, the same backend.
        assert_eq!(
            inspect(&xdp(&mut r.obj, &frame(client, second, Seg::Syn, &[])).out).dst,
            backend
        );
        let syn_ack = inspect(&tc(&mut r.obj, &frame(backend, client, Seg::SynAck, &[])).out);
        assert_eq!(
            (syn_ack.src, syn_ack.dst),
            (second, client),
            "the SYN-ACK leaves as the VIP the client asked"
        );
        xdp(&mut r.obj, &frame(client, second, Seg::Ack, &[]));
        let data = inspect(&tc(&mut r.obj, &frame(backend, client, Seg::Ack, b"hi")).out);
        assert_eq!(
            (data.src, data.dst),
            (second, client),
            "and so does the rest"
        );
        // The closed flow's forward entry went with its reply entry: conntrack holds no half
        // of a flow.
        let v = xdp(&mut r.obj, &frame(client, first, Seg::Syn, &[]));
        assert_eq!(inspect(&v.out).dst, backend);
    }
}

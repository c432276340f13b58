//! The actuator against the in-memory maps: write order, id lifetimes, adoption, limits, and
//! what a failed write leaves behind.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use splitter_common::l4::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_EMPTY, BACKENDS, CONNTRACK_V4, FLOW_CLOSING,
    MAX_ROUTES, MAX_TABLE_SIZE, ROUTES, RouteMeta, TABLES, VIPS,
};

use super::*;
use crate::dataplane::ebpf::l4_fake::{
    FakeL4Maps, Op, Visible, add_flow, assert_safe_order, live, visible,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn route(key: &str, vips: &[(&str, L4Proto)], table: &[Option<SocketAddr>]) -> L4RouteProgram {
    L4RouteProgram {
        key: key.into(),
        vips: vips.iter().map(|(a, p)| (sa(a), *p)).collect(),
        table: table.to_vec(),
        remote: BTreeSet::new(),
        dedicated: BTreeSet::new(),
    }
}

fn tcp(vip: &str) -> [(&str, L4Proto); 1] {
    [(vip, L4Proto::Tcp)]
}

fn fake() -> L4Actuator<FakeL4Maps> {
    L4Actuator::with_maps(FakeL4Maps::default()).expect("adopt empty maps")
}

fn take_log(act: &mut L4Actuator<FakeL4Maps>) -> Vec<Op> {
    std::mem::take(&mut act.maps_mut().log)
}

fn expected(desired: &[L4RouteProgram]) -> Visible {
    desired
        .iter()
        .flat_map(|r| {
            r.vips
                .iter()
                .map(|(a, p)| (vip_key(*a, *p), Some(r.table.clone())))
        })
        .collect()
}

#[test]
fn backends_are_active_before_any_table_names_them() {
    let mut act = fake();
    let (a, b, c) = (sa("10.1.0.1:80"), sa("10.1.0.2:80"), sa("10.1.0.3:80"));
    let mut whole_log = Vec::new();
    for (table, arriving) in [
        (vec![Some(a), Some(b), None], BTreeSet::from([0, 1])),
        (vec![Some(c), Some(b), Some(c)], BTreeSet::from([2])),
    ] {
        act.apply(&[route("web", &tcp("10.0.0.1:80"), &table)])
            .expect("apply");
        let log = take_log(&mut act);
        let first_slot = log
            .iter()
            .position(|op| matches!(op, Op::TableSlot { .. }))
            .expect("a table written");
        let activated = |ops: &[Op]| -> BTreeSet<u32> {
            ops.iter()
                .filter_map(|op| match op {
                    Op::Backend { id, state } if *state == BACKEND_ACTIVE => Some(*id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(activated(&log[..first_slot]), arriving);
        assert_eq!(activated(&log[first_slot..]), BTreeSet::new());
        whole_log.extend(log);
    }
    assert_eq!(act.backend_id(c), Some(2));
    assert_eq!(act.maps().backend(0).state, BACKEND_DRAINING, "a left");
    assert_safe_order(&whole_log);
}

#[test]
fn a_table_is_written_into_the_inactive_half_then_flipped() {
    let mut act = fake();
    let (a, b) = (sa("10.1.0.1:80"), sa("10.1.0.2:80"));
    let tables = [
        vec![Some(a); 5],
        vec![Some(b); 7],
        vec![Some(a), None, Some(b)],
    ];
    // A never-programmed route fills half 0 and makes it live; then the halves alternate.
    for (generation, (table, half)) in (1..).zip(tables.iter().zip([0, 1, 0])) {
        let report = act
            .apply(&[route("web", &tcp("10.0.0.1:80"), table)])
            .expect("apply");
        assert_eq!(report.tables_published, vec!["web".to_owned()]);
        let log = take_log(&mut act);
        let slots: Vec<&Op> = log
            .iter()
            .filter(|op| matches!(op, Op::TableSlot { .. }))
            .collect();
        assert_eq!(slots.len(), table.len());
        assert!(
            slots
                .iter()
                .all(|op| matches!(op, Op::TableSlot { half: h, .. } if *h == half)),
            "generation {generation}: every slot into half {half}"
        );
        let flip = RouteMeta {
            table_size: table.len() as u32,
            active: half,
            generation,
            _pad: 0,
        };
        let flips: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::RouteMeta { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flips.len(), 1, "one meta write publishes");
        assert_eq!(
            log[flips[0]],
            Op::RouteMeta {
                route_id: 0,
                meta: flip
            }
        );
        let last_slot = log
            .iter()
            .rposition(|op| matches!(op, Op::TableSlot { .. }))
            .expect("slots");
        assert!(last_slot < flips[0], "the flip comes after the last slot");
    }
    // The same desired state again: nothing to write.
    let report = act
        .apply(&[route("web", &tcp("10.0.0.1:80"), &tables[2])])
        .expect("apply");
    assert_eq!(report, ApplyReport::default());
    assert_eq!(take_log(&mut act), vec![]);
}

#[test]
fn no_backend_id_is_reused_while_conntrack_may_name_it() {
    let mut act = fake();
    let vip = "10.0.0.1:80";
    let web = |backend: &str| [route("web", &tcp(vip), &[Some(sa(backend))])];
    let (now, grace) = (Instant::now(), Duration::ZERO);
    act.apply(&web("10.1.0.1:80")).expect("a");
    let a_flow = add_flow(
        act.maps_mut(),
        ("192.0.2.1:1000", vip),
        ("10.1.0.1:80", 0),
        0,
    );
    act.apply(&web("10.1.0.2:80")).expect("b");
    act.apply(&web("10.1.0.3:80")).expect("c");
    assert_eq!(act.backend_id(sa("10.1.0.3:80")), Some(2), "a and b drain");

    let swept = act.sweep(now, grace).expect("sweep");
    assert_eq!(
        (swept.flows_reaped, swept.backends_freed, swept.draining),
        (0, 1, 1),
        "b, named by no flow, is freed; a's open flow keeps its id"
    );
    act.apply(&web("10.1.0.4:80")).expect("d");
    assert_eq!(
        act.backend_id(sa("10.1.0.4:80")),
        Some(1),
        "b's id is reused"
    );
    assert_eq!(act.maps().backend(0).state, BACKEND_DRAINING);

    // a's flow closes; the sweep removes it, then frees a.
    for k in a_flow {
        act.maps_mut().flows.get_mut(&k).expect("flow").flags = FLOW_CLOSING;
    }
    take_log(&mut act);
    let swept = act.sweep(now, grace).expect("sweep");
    assert_eq!(
        (swept.flows_reaped, swept.backends_freed),
        (1, 2),
        "a and c"
    );
    let log = take_log(&mut act);
    let freed_a = log
        .iter()
        .position(|op| {
            *op == Op::Backend {
                id: 0,
                state: BACKEND_EMPTY,
            }
        })
        .expect("a freed");
    for k in a_flow {
        let removed = log.iter().position(|op| *op == Op::FlowRemoved(k));
        assert!(
            removed.is_some_and(|i| i < freed_a),
            "{k:?} removed before a is freed"
        );
    }
    assert!(act.maps().flows.is_empty());
    act.apply(&web("10.1.0.5:80")).expect("e");
    assert_eq!(
        act.backend_id(sa("10.1.0.5:80")),
        Some(0),
        "a's id is reused"
    );
}

#[test]
fn route_ids_stay_with_their_keys() {
    let mut act = fake();
    let a = Some(sa("10.1.0.1:80"));
    let r = |key: &str, vip: &str| route(key, &tcp(vip), &[a]);
    act.apply(&[r("one", "10.0.0.1:80"), r("two", "10.0.0.2:80")])
        .expect("apply");
    assert_eq!(
        (act.route_id("one"), act.route_id("two")),
        (Some(0), Some(1))
    );

    let report = act.apply(&[r("two", "10.0.0.2:80")]).expect("apply");
    assert_eq!((report.vips_removed, report.tables_published.len()), (1, 0));
    assert_eq!((act.route_id("one"), act.route_id("two")), (None, Some(1)));
    assert_eq!(
        act.maps().route(0),
        RouteMeta::default(),
        "one unprogrammed"
    );

    act.apply(&[r("three", "10.0.0.3:80"), r("two", "10.0.0.2:80")])
        .expect("apply");
    assert_eq!(
        (act.route_id("three"), act.route_id("two")),
        (Some(0), Some(1))
    );
    // A route leaving and one arriving in the same apply: the leaver holds its id until its
    // VIPs are gone, so the newcomer takes another.
    act.apply(&[r("four", "10.0.0.4:80"), r("two", "10.0.0.2:80")])
        .expect("apply");
    assert_eq!(
        (act.route_id("four"), act.route_id("two")),
        (Some(2), Some(1))
    );
    assert_eq!(act.route_id("three"), None);
    assert_safe_order(&act.maps().log);
}

/// A route that is invalid or over a limit is left out and named; the routes beside it are
/// served as if it were not there, and it writes nothing.
#[test]
fn a_route_over_a_limit_writes_nothing_and_never_blocks_the_others() {
    let mut act = fake();
    let (a, a6) = (sa("10.1.0.1:80"), sa("[fd01::1]:80"));
    let good = route("web", &tcp("10.0.0.1:80"), &[Some(a)]);
    act.apply(std::slice::from_ref(&good)).expect("apply");
    take_log(&mut act);
    let before = visible(act.maps());

    let huge = vec![Some(a); MAX_TABLE_SIZE as usize + 1];
    let many: Vec<Option<SocketAddr>> = (0..=MAX_BACKENDS)
        .map(|i| {
            Some(SocketAddr::new(
                IpAddr::from([10, 2, (i >> 8) as u8, i as u8]),
                80,
            ))
        })
        .collect();
    let bad = [
        route("empty", &tcp("10.0.2.1:80"), &[]),
        route("huge", &tcp("10.0.2.2:80"), &huge),
        route("family", &tcp("10.0.2.3:80"), &[Some(a6)]),
        route("many", &tcp("10.0.2.4:80"), &many),
    ];
    let mut desired = bad.to_vec();
    desired.push(good.clone());
    let report = act.apply(&desired).expect("apply");
    let keys: Vec<&str> = report.rejected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["empty", "huge", "family", "many"]);
    assert!(report.rejected[2].1.contains("different IP families"));
    assert!(report.rejected[3].1.contains("backends"));
    assert_eq!(take_log(&mut act), vec![], "nothing written for them");
    assert_eq!(visible(act.maps()), before, "the good route still served");

    // Routes: the 33rd is left out; the first 32 (the good one among them) are served.
    let mut routes: Vec<L4RouteProgram> = (1..MAX_ROUTES)
        .map(|i| {
            route(
                &format!("r{i:02}"),
                &tcp(&format!("10.0.1.{i}:80")),
                &[Some(a)],
            )
        })
        .collect();
    routes.insert(0, good.clone());
    routes.push(route("over", &tcp("10.0.3.1:80"), &[Some(a)]));
    let report = act.apply(&routes).expect("apply");
    assert_eq!(
        report.rejected,
        vec![("over".into(), L4ApplyError::TooManyRoutes.to_string())]
    );
    assert_eq!(
        visible(act.maps()),
        expected(&routes[..MAX_ROUTES as usize])
    );

    // Ids are freed before new ones are taken: with one old route gone in the same plan,
    // the waiting one gets its id at once.
    routes.remove(1);
    let report = act.apply(&routes).expect("apply");
    assert_eq!(report.rejected, vec![]);
    assert_eq!(visible(act.maps()), expected(&routes));
}

#[test]
fn a_restarted_actuator_adopts_ids_and_publishes_into_the_other_half() {
    let mut first = fake();
    let (a, b, c, d) = (
        sa("10.1.0.1:80"),
        sa("10.1.0.2:80"),
        sa("10.1.0.3:80"),
        sa("10.1.0.4:80"),
    );
    first
        .apply(&[
            route("web", &tcp("10.0.0.1:80"), &[Some(a), Some(b)]),
            route("api", &tcp("10.0.0.2:80"), &[Some(c)]),
        ])
        .expect("apply");
    let desired = [
        route("web", &tcp("10.0.0.1:80"), &[Some(a), Some(b)]),
        route("api", &tcp("10.0.0.2:80"), &[Some(d)]),
    ];
    first.apply(&desired).expect("apply");
    let mut maps = first.maps().clone();
    maps.log.clear();
    let before = maps.clone();

    let mut second = L4Actuator::with_maps(maps).expect("adopt");
    assert_eq!(
        second.route_id("web"),
        None,
        "route keys are not in the kernel"
    );
    for addr in [a, b, c, d] {
        assert_eq!(second.backend_id(addr), first.backend_id(addr), "{addr}");
    }
    let report = second.apply(&desired).expect("apply");
    assert_eq!(
        report,
        ApplyReport {
            tables_published: vec!["web".into(), "api".into()],
            ..ApplyReport::default()
        },
        "tables are republished once; no VIP or backend changes"
    );
    for key in ["web", "api"] {
        let id = second.route_id(key).expect("adopted");
        assert_eq!(Some(id), first.route_id(key), "{key} keeps its route id");
        let (old, new) = (before.route(id), second.maps().route(id));
        assert_eq!(
            new.active,
            1 - old.active,
            "{key}: published into the other half"
        );
        assert_eq!(new.generation, old.generation + 1);
    }
    assert_eq!(visible(second.maps()), expected(&desired));
    assert_eq!(
        second.maps().backend(2).state,
        BACKEND_DRAINING,
        "c still drains"
    );
    second
        .apply(&[route(
            "web",
            &tcp("10.0.0.1:80"),
            &[Some(sa("10.1.0.5:80"))],
        )])
        .expect("apply");
    assert_eq!(
        second.backend_id(sa("10.1.0.5:80")),
        Some(4),
        "the adopted draining id is not reused"
    );

    // Another restart where a route's key changed: its VIP still leads to its id.
    let mut third = L4Actuator::with_maps(second.maps().clone()).expect("adopt");
    third
        .apply(&[route("web-renamed", &tcp("10.0.0.1:80"), &[Some(a)])])
        .expect("apply");
    assert_eq!(third.route_id("web-renamed"), second.route_id("web"));
}

/// An agent killed with two routes, restarted with a plan that names one: the first apply
/// removes the other's VIP, drains its backend and clears its route meta, so the pinned state
/// is exactly the new plan's.
#[test]
fn a_restarted_actuator_removes_what_its_first_plan_does_not_name() {
    let mut first = fake();
    let (a, c) = (sa("10.1.0.1:80"), sa("10.1.0.3:80"));
    let web = route("web", &tcp("10.0.0.1:80"), &[Some(a)]);
    first
        .apply(&[web.clone(), route("api", &tcp("10.0.0.2:80"), &[Some(c)])])
        .expect("apply");
    let api_id = first.route_id("api").expect("api id");
    let c_id = first.backend_id(c).expect("c id");
    let mut maps = first.maps().clone();
    maps.log.clear();

    let mut second = L4Actuator::with_maps(maps).expect("adopt");
    let report = second.apply(std::slice::from_ref(&web)).expect("apply");
    assert_eq!(report.vips_removed, 1, "{report:?}");
    assert_eq!(report.backends_draining, 1, "{report:?}");
    assert_eq!(visible(second.maps()), expected(&[web]));
    assert_eq!(second.maps().backend(c_id).state, BACKEND_DRAINING);
    assert_eq!(
        second.maps().route(api_id),
        RouteMeta::default(),
        "the gone route's meta is cleared"
    );
}

/// Two desired states between which every kind of step happens: backends arrive and leave, a
/// table changes and one does not, a route leaves and its VIP moves to a new route, another
/// VIP moves between routes.
fn before_and_after() -> ([L4RouteProgram; 3], [L4RouteProgram; 3]) {
    let (a, b, c, d, e, f) = (
        sa("10.1.0.1:80"),
        sa("10.1.0.2:80"),
        sa("10.1.0.3:80"),
        sa("10.1.0.4:80"),
        sa("10.1.0.5:80"),
        sa("10.1.0.6:80"),
    );
    let both = |tcp: &'static str, udp: &'static str| [(tcp, L4Proto::Tcp), (udp, L4Proto::Udp)];
    (
        [
            route(
                "web",
                &both("10.0.0.1:80", "10.0.0.1:53"),
                &[Some(a), Some(b), None, Some(a)],
            ),
            route("api", &tcp("10.0.0.2:80"), &[Some(c); 5]),
            route("old", &tcp("10.0.0.3:80"), &[Some(d); 3]),
        ],
        [
            route(
                "web",
                &tcp("10.0.0.1:80"),
                &[Some(a), Some(e), Some(e), None, Some(a)],
            ),
            route("api", &tcp("10.0.0.2:80"), &[Some(c); 5]),
            route("new", &both("10.0.0.3:80", "10.0.0.1:53"), &[Some(f); 7]),
        ],
    )
}

/// Mid-way from `s1` to `s2`: each route's live half holds its old or its new table, complete,
/// and each VIP leads to a complete table of one of them.
fn assert_whole_tables_live(
    act: &L4Actuator<FakeL4Maps>,
    s1: &[L4RouteProgram],
    s2: &[L4RouteProgram],
    case: &str,
) {
    let table_of =
        |s: &[L4RouteProgram], key: &str| s.iter().find(|r| r.key == key).map(|r| r.table.clone());
    for (key, id) in &act.applied.route_ids {
        let table = live(act.maps(), *id);
        assert!(
            table == table_of(s1, key) || table == table_of(s2, key),
            "{case}: route {key} runs {table:?}"
        );
    }
    let complete: Vec<Option<Vec<Option<SocketAddr>>>> =
        s1.iter().chain(s2).map(|r| Some(r.table.clone())).collect();
    for (vip, table) in visible(act.maps()) {
        assert!(
            complete.contains(&table),
            "{case}: {vip:?} leads to {table:?}"
        );
    }
}

fn applied_cleanly(steps: &[&[L4RouteProgram]]) -> L4Actuator<FakeL4Maps> {
    let mut act = fake();
    for desired in steps {
        act.apply(desired).expect("apply");
    }
    act
}

#[test]
fn every_failed_write_leaves_whole_tables_live_and_the_next_apply_converges() {
    let (s1, s2) = before_and_after();
    let mut clean = applied_cleanly(&[&s1]);
    assert_eq!(
        clean.apply(&s2).expect("clean"),
        ApplyReport {
            tables_published: vec!["web".into(), "new".into()],
            vips_added: 2,
            vips_removed: 0,
            backends_added: 2,
            backends_draining: 2,
            rejected: vec![],
        },
        "e and f arrive, b and d leave, two VIPs move to the new route"
    );
    let (old, new) = (expected(&s1), expected(&s2));
    for map in [BACKENDS, TABLES, ROUTES, VIPS] {
        for nth in 1.. {
            let mut act = applied_cleanly(&[&s1]);
            act.maps_mut().fail_writes(map, nth);
            let Err(err) = act.apply(&s2) else {
                assert!(nth > 1, "{map}: no write to fail");
                break;
            };
            let case = format!("{map}, write {nth}");
            assert!(
                matches!(err, L4ApplyError::Map { name, .. } if name == map),
                "{case}: {err}"
            );
            assert_whole_tables_live(&act, &s1, &s2, &case);
            act.apply(&s2).expect_err("the fault persists");
            assert_whole_tables_live(&act, &s1, &s2, &case);

            act.maps_mut().heal();
            act.apply(&s2).expect("converges");
            assert_eq!(visible(act.maps()), new, "{case}");
            assert_eq!(
                act.applied, clean.applied,
                "{case}: the same ids and halves"
            );
            assert_eq!(act.maps().backends, clean.maps().backends, "{case}");
            assert_eq!(act.maps().routes, clean.maps().routes, "{case}");
            assert_eq!(act.maps().vips, clean.maps().vips, "{case}");
            assert_safe_order(&act.maps().log);

            // Or, from a failure, the desired state goes back to the old one.
            let mut back = applied_cleanly(&[&s1]);
            back.maps_mut().fail_writes(map, nth);
            back.apply(&s2).expect_err("fails");
            back.maps_mut().heal();
            back.apply(&s1).expect("back");
            assert_eq!(visible(back.maps()), old, "{case}: back to the old state");
            assert_safe_order(&back.maps().log);
        }
    }
}

#[test]
fn a_failed_sweep_keeps_the_id_until_a_later_sweep_frees_it() {
    let vip = "10.0.0.1:80";
    let web = |backend: &str| [route("web", &tcp(vip), &[Some(sa(backend))])];
    let (now, grace) = (Instant::now(), Duration::ZERO);
    for (map, nth) in [(CONNTRACK_V4, 1), (CONNTRACK_V4, 2), (BACKENDS, 1)] {
        let mut act = fake();
        act.apply(&web("10.1.0.1:80")).expect("a");
        let a_flow = add_flow(
            act.maps_mut(),
            ("192.0.2.1:1000", vip),
            ("10.1.0.1:80", 0),
            FLOW_CLOSING,
        );
        act.apply(&web("10.1.0.2:80")).expect("b");
        act.maps_mut().fail_writes(map, nth);
        let err = act.sweep(now, grace).expect_err("fails");
        assert!(
            matches!(err, L4ApplyError::Map { name, .. } if name == map),
            "{err}"
        );
        act.maps_mut().heal();
        assert_eq!(act.maps().backend(0).state, BACKEND_DRAINING, "{map} {nth}");
        act.apply(&[route(
            "web",
            &tcp(vip),
            &[Some(sa("10.1.0.2:80")), Some(sa("10.1.0.3:80"))],
        )])
        .expect("c");
        assert_eq!(
            act.backend_id(sa("10.1.0.3:80")),
            Some(2),
            "{map} {nth}: 0 drains"
        );

        let swept = act.sweep(now, grace).expect("sweep");
        assert_eq!(
            (swept.backends_freed, swept.draining),
            (1, 0),
            "{map} {nth}"
        );
        assert!(a_flow.iter().all(|k| !act.maps().flows.contains_key(k)));
        assert_eq!(act.maps().backend(0), Backend::default());
        assert_eq!(act.backend_id(sa("10.1.0.1:80")), None);
        assert_safe_order(&act.maps().log);
    }
}

#[test]
fn a_sweep_with_nothing_draining_leaves_conntrack_alone() {
    let mut act = fake();
    act.apply(&[route(
        "web",
        &tcp("10.0.0.1:80"),
        &[Some(sa("10.1.0.1:80"))],
    )])
    .expect("apply");
    add_flow(
        act.maps_mut(),
        ("192.0.2.1:1000", "10.0.0.1:80"),
        ("10.1.0.1:80", 0),
        FLOW_CLOSING,
    );
    take_log(&mut act);
    let swept = act.sweep(Instant::now(), Duration::ZERO).expect("sweep");
    assert_eq!(swept, SweepReport::default());
    assert_eq!(take_log(&mut act), vec![]);
    assert_eq!(
        act.maps().flows.len(),
        2,
        "flows to active backends are the LRU's"
    );
}

#[test]
fn a_backend_turning_remote_is_a_new_backend_and_its_table_is_republished() {
    let mut act = fake();
    let a = sa("10.1.0.1:80");
    let local = route("web", &tcp("10.0.0.1:80"), &[Some(a), None]);
    act.apply(std::slice::from_ref(&local))
        .expect("apply local");
    let local_id = act.backend_id(a).expect("id");
    assert_eq!(act.maps().backend(local_id).flags, 0);

    let remote = L4RouteProgram {
        remote: BTreeSet::from([a]),
        ..local.clone()
    };
    let report = act
        .apply(std::slice::from_ref(&remote))
        .expect("apply remote");
    assert_eq!(report.tables_published, vec!["web".to_owned()]);
    assert_eq!((report.backends_added, report.backends_draining), (1, 1));
    let remote_id = act.backend_id(a).expect("id");
    assert_ne!(remote_id, local_id, "a new id: old flows keep DNAT only");
    assert_eq!(act.maps().backend(remote_id).flags, BACKEND_FLAG_REMOTE);
    assert_eq!(act.maps().backend(local_id).state, BACKEND_DRAINING);
    let live_ids = act.maps().live_table(act.route_id("web").expect("route"));
    assert_eq!(live_ids[0], remote_id, "the live table names the remote id");
    assert_eq!(
        act.apply(std::slice::from_ref(&remote)).expect("again"),
        ApplyReport::default(),
        "nothing left to do"
    );

    // A restarted agent reads the flag back: no id changes.
    let mut second = L4Actuator::with_maps(act.maps().clone()).expect("adopt");
    second
        .apply(std::slice::from_ref(&remote))
        .expect("apply after restart");
    assert_eq!(second.backend_id(a), Some(remote_id));
}

#[test]
fn dedicated_vips_carry_their_flag_and_the_config_is_written_once() {
    use splitter_common::l4::{L4Config, VIP_DEDICATED};
    let mut act = fake();
    let vip = sa("10.0.0.1:80");
    let mut r = route("web", &tcp("10.0.0.1:80"), &[Some(sa("10.1.0.1:80"))]);
    act.apply(std::slice::from_ref(&r)).expect("apply");
    let key = vip_key(vip, L4Proto::Tcp);
    assert_eq!(act.maps().vips[&key].flags, 0);
    r.dedicated = BTreeSet::from([vip.ip()]);
    let report = act.apply(std::slice::from_ref(&r)).expect("apply");
    assert_eq!(report.vips_added, 1, "the flag change rewrites the VIP");
    assert_eq!(act.maps().vips[&key].flags, VIP_DEDICATED);

    let config = L4Config {
        port_min: 61000,
        port_max: 64999,
        ..L4Config::default()
    };
    take_log(&mut act);
    act.set_config(config).expect("config");
    act.set_config(config).expect("config again");
    assert_eq!(take_log(&mut act), vec![Op::Config(config)]);
    assert_eq!(act.maps().config, config);
}

/// A SNAT flow's legs are (client -> VIP) and (backend -> node:port): the reaper pairs them by
/// the entries' second address, so a closed flow to a draining remote backend goes entirely.
#[test]
fn both_legs_of_a_closed_snat_flow_are_reaped() {
    use crate::dataplane::ebpf::CtKey;
    use splitter_common::l4::{DIR_FORWARD, FLOW_SNAT, FlowKey4, FlowValue};
    let mut act = fake();
    let (vip, backend) = (sa("10.0.0.1:80"), sa("10.1.0.1:80"));
    let remote = L4RouteProgram {
        remote: BTreeSet::from([backend]),
        ..route("web", &tcp("10.0.0.1:80"), &[Some(backend)])
    };
    act.apply(std::slice::from_ref(&remote)).expect("apply");
    let id = act.backend_id(backend).expect("id");
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => unreachable!(),
    };
    let (client, snat) = (sa("192.0.2.1:40000"), sa("10.0.0.2:61234"));
    let forward = FlowKey4 {
        src: v4(client),
        dst: v4(vip),
        src_port: client.port(),
        dst_port: vip.port(),
        proto: L4Proto::Tcp.number(),
        dir: DIR_FORWARD,
        _pad: [0; 2],
    };
    let to_backend = FlowValue {
        addr: addr16(backend.ip()),
        port: backend.port(),
        backend_id: id,
        flags: FLOW_SNAT | FLOW_CLOSING,
        nat_addr: addr16(snat.ip()),
        nat_port: snat.port(),
        ..FlowValue::default()
    };
    let reply = forward.twin(&to_backend);
    assert_eq!((reply.src, reply.dst), (v4(backend), v4(snat)));
    let to_client = FlowValue {
        addr: addr16(vip.ip()),
        port: vip.port(),
        nat_addr: addr16(client.ip()),
        nat_port: client.port(),
        ..to_backend
    };
    let keys = [CtKey::V4(forward), CtKey::V4(reply)];
    act.maps_mut().flows.insert(keys[0], to_backend);
    act.maps_mut().flows.insert(keys[1], to_client);

    act.apply(&[route(
        "web",
        &tcp("10.0.0.1:80"),
        &[Some(sa("10.1.0.2:80"))],
    )])
    .expect("the backend leaves");
    let grace = Duration::from_secs(120);
    let t0 = Instant::now();
    act.sweep(t0, grace).expect("first sight of the close");
    let swept = act.sweep(t0 + grace, grace).expect("after the grace");
    assert_eq!((swept.flows_reaped, swept.backends_freed), (1, 1));
    assert!(act.maps().flows.is_empty(), "both legs removed");
}

/// A closed SNAT flow holds a port of the reserved range: it is reaped even while its backend
/// stays active.
#[test]
fn closed_snat_flows_to_an_active_backend_are_reaped_and_open_ones_kept() {
    use crate::dataplane::ebpf::CtKey;
    use splitter_common::l4::{DIR_FORWARD, FLOW_SNAT, FlowKey4, FlowValue};
    let mut act = fake();
    let (vip, backend) = (sa("10.0.0.1:80"), sa("10.1.0.1:80"));
    let remote = L4RouteProgram {
        remote: BTreeSet::from([backend]),
        ..route("web", &tcp("10.0.0.1:80"), &[Some(backend)])
    };
    act.apply(std::slice::from_ref(&remote)).expect("apply");
    let id = act.backend_id(backend).expect("id");
    let mut add = |client_port: u16, snat_port: u16, flags: u8| {
        let forward = FlowKey4 {
            src: [192, 0, 2, 1],
            dst: [10, 0, 0, 1],
            src_port: client_port,
            dst_port: vip.port(),
            proto: L4Proto::Tcp.number(),
            dir: DIR_FORWARD,
            _pad: [0; 2],
        };
        let v = FlowValue {
            addr: addr16(backend.ip()),
            port: backend.port(),
            backend_id: id,
            flags: FLOW_SNAT | flags,
            nat_addr: addr16(sa("10.0.0.2:1").ip()),
            nat_port: snat_port,
            ..FlowValue::default()
        };
        let reply = forward.twin(&v);
        act.maps_mut().flows.insert(CtKey::V4(forward), v);
        act.maps_mut().flows.insert(
            CtKey::V4(reply),
            FlowValue {
                addr: addr16(vip.ip()),
                port: vip.port(),
                nat_addr: addr16(sa("192.0.2.1:1").ip()),
                nat_port: client_port,
                ..v
            },
        );
    };
    add(40000, 61000, FLOW_CLOSING);
    add(40001, 61001, 0);
    let grace = Duration::from_secs(120);
    let t0 = Instant::now();
    assert_eq!(act.sweep(t0, grace).expect("sweep").flows_reaped, 0);
    let swept = act.sweep(t0 + grace, grace).expect("sweep");
    assert_eq!((swept.flows_reaped, swept.backends_freed), (1, 0));
    assert_eq!(
        act.maps().flows.len(),
        2,
        "the open flow keeps both entries"
    );
    assert!(
        act.maps()
            .flows
            .values()
            .all(|v| v.nat_port == 61001 || v.nat_port == 40001)
    );
    assert_eq!(act.maps().backend(id).state, BACKEND_ACTIVE);
}

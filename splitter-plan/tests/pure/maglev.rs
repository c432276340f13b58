//! Properties of the weighted Maglev table: exact quotas, independence from input order and from
//! history (a table is a pure function of its shares), and bounded disruption for every single
//! add, remove and weight change.

use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use splitter_plan::plan::maglev::{
    self, DEFAULT_M, LARGE_M, TableShare, TableTarget, WeightedTable,
};

fn target(i: u32) -> TableTarget {
    TableTarget::Endpoint(SocketAddr::new(
        Ipv4Addr::from(0x0a00_0000 + i).into(),
        8080,
    ))
}

/// Endpoints `ids` with integer weights; the share of each is weight / total.
fn shares(set: &[(u32, u64)]) -> Vec<TableShare> {
    let total: u64 = set.iter().map(|(_, w)| w).sum();
    set.iter()
        .map(|&(id, w)| TableShare {
            target: if id == u32::MAX {
                TableTarget::Reject
            } else {
                target(id)
            },
            num: w,
            den: total,
        })
        .collect()
}

fn table(set: &[(u32, u64)], previous: Option<&WeightedTable>) -> WeightedTable {
    maglev::build(DEFAULT_M, &shares(set), previous)
}

/// Distinct endpoint ids (one may be REJECT) with weights 1..=100.
fn endpoint_set(max: usize) -> impl Strategy<Value = Vec<(u32, u64)>> {
    proptest::collection::btree_map(prop_oneof![0u32..500, Just(u32::MAX)], 1u64..=100, 2..max)
        .prop_map(|m| m.into_iter().collect())
}

/// What a single change may move: three times the minimum plus 2% of the table. Without
/// history a change of one backend shifts some claims of the others (Maglev's own behaviour); a
/// small change moves the most relative to its tiny minimum, hence the slack. Measured
/// (`maglev_disruption_survey`, 60,000 random additions, removals and weight changes): at most
/// 0.70 of this bound. The earlier bound, twice the minimum plus 1%, was exceeded about once in
/// 6,000 additions, which made these property tests fail now and then.
fn bound(d: &maglev::Disruption) -> u32 {
    3 * d.minimum + DEFAULT_M / 50
}

fn assert_bounded(moves: &[maglev::Disruption]) -> Result<(), TestCaseError> {
    for d in moves {
        prop_assert!(d.moved <= bound(d), "{moves:?}");
    }
    Ok(())
}

/// The disruption from `set` to each of `changes`, with the invariants every change keeps.
fn ratios(
    set: &[(u32, u64)],
    changes: &[Vec<(u32, u64)>],
) -> Result<Vec<maglev::Disruption>, TestCaseError> {
    let old = table(set, None);
    let mut out = Vec::new();
    for c in changes {
        let new = table(c, Some(&old));
        // History-free: the previous table feeds only the disruption figure.
        prop_assert_eq!(&new.slots, &table(c, None).slots);
        let d = maglev::disruption(&old, &new);
        prop_assert_eq!(new.disruption, Some(d));
        prop_assert!(d.moved >= d.minimum, "{d:?}");
        if d.minimum == 0 {
            prop_assert_eq!(d.moved, 0);
        }
        out.push(d);
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn quotas_are_exact_to_one_slot(set in endpoint_set(40)) {
        let t = table(&set, None);
        let total: u64 = set.iter().map(|(_, w)| w).sum();
        for s in shares(&set) {
            let want = f64::from(t.m) * s.num as f64 / total as f64;
            let got = f64::from(t.quota_of(&s.target));
            prop_assert!((got - want).abs() < 1.0, "{}: {got} vs {want}", s.target);
        }
        prop_assert_eq!(t.backends.iter().map(|b| u64::from(b.quota)).sum::<u64>(), u64::from(t.m));
        // The slots hold exactly the quotas.
        let mut counts = vec![0u32; t.backends.len()];
        for &s in &t.slots {
            counts[s as usize] += 1;
        }
        prop_assert_eq!(counts, t.backends.iter().map(|b| b.quota).collect::<Vec<_>>());
    }

    /// Two agents: one follows a sequence of edits (each table built from its predecessor, as
    /// the control loop builds them), the other starts on the final shares. They must hold the
    /// same table, or a flow moved between their nodes would change backend.
    #[test]
    fn a_table_does_not_depend_on_the_edits_that_led_to_it(
        set in endpoint_set(20),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u64..=100, 0u32..500), 1..12),
    ) {
        let mut current = set.clone();
        let mut followed = table(&current, None);
        for (pick, w, id) in edits {
            let i = pick.index(current.len());
            match w {
                // Weight 0 removes the endpoint (kept non-empty); otherwise re-weight, or add a
                // new one when the drawn id is not in the set yet.
                0 if current.len() > 1 => { current.remove(i); }
                0 => {}
                _ if current.iter().all(|(c, _)| *c != id) => current.push((id, w)),
                _ => current[i].1 = w,
            }
            followed = table(&current, Some(&followed));
        }
        let fresh = table(&current, None);
        prop_assert_eq!(&followed.slots, &fresh.slots);
        prop_assert_eq!(&followed.backends, &fresh.backends);
    }

    #[test]
    fn same_table_for_any_input_order(set in endpoint_set(40), seed in any::<u64>()) {
        let mut shuffled = shares(&set);
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let a = maglev::build(DEFAULT_M, &shares(&set), None);
        let b = maglev::build(DEFAULT_M, &shuffled, None);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn adding_a_backend_moves_about_the_minimum(set in endpoint_set(30), ws in proptest::collection::vec(1u64..=100, 8)) {
        let changes: Vec<_> = ws.iter().enumerate().map(|(i, &w)| {
            let mut c = set.clone();
            c.push((1000 + i as u32, w));
            c
        }).collect();
        assert_bounded(&ratios(&set, &changes)?)?;
    }

    #[test]
    fn removing_a_backend_moves_about_the_minimum(set in endpoint_set(30)) {
        let changes: Vec<_> = (0..set.len().min(8)).map(|i| {
            let mut c = set.clone();
            c.remove(i * set.len() / set.len().min(8));
            c
        }).collect();
        assert_bounded(&ratios(&set, &changes)?)?;
    }

    #[test]
    fn changing_a_weight_moves_about_the_minimum(
        set in endpoint_set(30),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), 1u64..=100), 8),
    ) {
        let changes: Vec<_> = picks.iter().map(|(pick, w)| {
            let mut c = set.clone();
            let i = pick.index(set.len());
            c[i].1 = *w;
            c
        }).collect();
        assert_bounded(&ratios(&set, &changes)?)?;
    }
}

#[test]
fn a_large_set_uses_the_large_table_and_stays_exact() {
    let set: Vec<(u32, u64)> = (0..1000).map(|i| (i, u64::from(i % 7 + 1))).collect();
    let t = maglev::build(LARGE_M, &shares(&set), None);
    assert_eq!(t.m, LARGE_M);
    assert_eq!(t.backends.len(), 1000);
    assert_eq!(maglev::table_size(1000), LARGE_M);
    assert_eq!(maglev::table_size(10), DEFAULT_M);
}

#[test]
fn lookups_follow_the_slots_and_an_empty_input_rejects() {
    let t = maglev::build(DEFAULT_M, &[], None);
    assert!(t.backends.is_empty());
    assert_eq!(t.target_for(12345), TableTarget::Reject);
    let t = table(&[(1, 1)], None);
    assert_eq!(t.target_for(0), target(1));
    assert_eq!(t.target_for(u32::MAX), target(1));
}

/// The bound over a fixed, seeded sequence of single changes (additions, removals, weight
/// changes; REJECT shares in half the sets): deterministic, unlike the property tests, so it
/// never flakes, and it prints the worst cases. 900 changes by default; the README's figure
/// (60,000 changes, at most 0.70 of the bound) is `MAGLEV_SURVEY_CASES=60000 cargo test
/// --release -p splitter-plan --test pure -- --nocapture maglev_disruption_survey`.
#[test]
fn maglev_disruption_survey() {
    let cases: u32 = std::env::var("MAGLEV_SURVEY_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(900);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut worst: Vec<(f64, String)> = Vec::new();
    for case in 0..cases {
        let n = 2 + next(28) as usize;
        let mut set: Vec<(u32, u64)> = Vec::new();
        if next(2) == 0 {
            set.push((u32::MAX, 1 + next(100)));
        }
        while set.len() < n {
            let id = next(500) as u32;
            if set.iter().all(|(i, _)| *i != id) {
                set.push((id, 1 + next(100)));
            }
        }
        set.sort();
        let old = table(&set, None);
        let mut c = set.clone();
        match case % 3 {
            0 => c.push((1000, 1 + next(100))),
            1 if c.len() > 1 => {
                c.remove(next(c.len() as u64) as usize);
            }
            _ => {
                let i = next(c.len() as u64) as usize;
                c[i].1 = 1 + next(100);
            }
        }
        let new = table(&c, Some(&old));
        let d = maglev::disruption(&old, &new);
        worst.push((
            f64::from(d.moved) / f64::from(bound(&d)),
            format!(
                "case {case}: {d:?} bound {} from {set:?} to {c:?}",
                bound(&d)
            ),
        ));
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (r, s) in worst.iter().take(5) {
        println!("{r:.3} {s}");
    }
    assert!(worst[0].0 <= 1.0, "over the bound: {}", worst[0].1);
}

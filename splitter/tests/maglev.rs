//! Properties of the weighted Maglev table: exact quotas, independence from input order, and
//! disruption bounded by twice the minimum for adds, removes and weight changes.

use std::net::{Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use splitter::plan::maglev::{self, DEFAULT_M, LARGE_M, TableShare, TableTarget, WeightedTable};

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

fn assert_bounded(old: &WeightedTable, new: &WeightedTable) -> Result<(), TestCaseError> {
    let d = maglev::disruption(old, new);
    prop_assert!(d.moved >= d.minimum, "{d:?}");
    prop_assert!(
        d.moved <= 2 * d.minimum,
        "moved {} slots, minimum {}",
        d.moved,
        d.minimum
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

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
    fn adding_a_backend_moves_at_most_twice_the_minimum(set in endpoint_set(30), w in 1u64..=100) {
        let old = table(&set, None);
        let mut bigger = set.clone();
        bigger.push((1000, w));
        assert_bounded(&old, &table(&bigger, None))?;
    }

    #[test]
    fn removing_a_backend_moves_at_most_twice_the_minimum(set in endpoint_set(30), pick in any::<prop::sample::Index>()) {
        let old = table(&set, None);
        let mut smaller = set.clone();
        smaller.remove(pick.index(set.len()));
        assert_bounded(&old, &table(&smaller, None))?;
    }

    #[test]
    fn changing_a_weight_moves_at_most_twice_the_minimum(
        set in endpoint_set(30),
        pick in any::<prop::sample::Index>(),
        w in 1u64..=100,
    ) {
        let old = table(&set, None);
        let mut changed = set.clone();
        let i = pick.index(set.len());
        changed[i].1 = w;
        assert_bounded(&old, &table(&changed, None))?;
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

//! Weighted Maglev tables for L4 listeners.
//!
//! A table has `m` slots (m prime); each slot names a backend (an endpoint, or the REJECT
//! pseudo-backend that holds the invalid and no-endpoint share). Quotas are exact: backend i
//! owns floor(m * share_i) slots plus one for the largest remainders, so the split is right to
//! one slot. Slots are filled Maglev-style: each backend walks its own permutation of the slots,
//! seeded by its identity (address, port) and never its list position, so the same inputs give
//! the same table on every node and in any order, and a change moves few slots. Backends take
//! turns in proportion to their quota (stride scheduling) so a weight change behaves like an
//! add or remove of a small backend instead of reshuffling the table.

use std::{cmp::Ordering, collections::BinaryHeap, net::SocketAddr};

use serde::Serialize;

/// The default table size: prime, and over 100 times the endpoints of a typical route.
pub const DEFAULT_M: u32 = 16381;
/// The table size once a route has many endpoints.
pub const LARGE_M: u32 = 65537;
/// Above this many backends the default table gets too coarse (under ~100 slots each).
pub const LARGE_SET: usize = 160;

/// Picks the table size for `backends` entries.
pub fn table_size(backends: usize) -> u32 {
    if backends > LARGE_SET {
        LARGE_M
    } else {
        DEFAULT_M
    }
}

/// What a slot sends a new flow to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TableTarget {
    Endpoint(SocketAddr),
    /// TCP: answer the SYN with RST; UDP: drop.
    Reject,
}

impl std::fmt::Display for TableTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableTarget::Endpoint(a) => write!(f, "{a}"),
            TableTarget::Reject => f.write_str("REJECT"),
        }
    }
}

/// One input of a table: `target` should get `num / den` of the flows. The shares of one table
/// add up to 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableShare {
    pub target: TableTarget,
    pub num: u64,
    pub den: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableBackend {
    pub target: TableTarget,
    /// Slots owned; quota / m is the share actually programmed.
    pub quota: u32,
}

/// How much of the table changed against the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Disruption {
    /// Slots whose target changed.
    pub moved: u32,
    /// The fewest slots any table with the new quotas could have changed.
    pub minimum: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightedTable {
    pub m: u32,
    /// Sorted by target (endpoints by address and port, REJECT last); zero-quota entries dropped.
    pub backends: Vec<TableBackend>,
    /// `m` entries, each an index into `backends`.
    #[serde(skip)]
    pub slots: Vec<u32>,
    /// Against the previous table of the same listener, when it had the same size.
    pub disruption: Option<Disruption>,
}

impl WeightedTable {
    /// The target of the slot a flow hash falls into.
    pub fn target_for(&self, hash: u32) -> TableTarget {
        let slot = (hash % self.m) as usize;
        self.slots
            .get(slot)
            .and_then(|&b| self.backends.get(b as usize))
            .map_or(TableTarget::Reject, |b| b.target)
    }

    /// The endpoint of every slot, in slot order (`None` for REJECT): the table as the kernel
    /// holds it.
    pub fn slot_endpoints(&self) -> Vec<Option<SocketAddr>> {
        self.slots
            .iter()
            .map(|&b| match self.backends.get(b as usize).map(|b| b.target) {
                Some(TableTarget::Endpoint(a)) => Some(a),
                _ => None,
            })
            .collect()
    }

    pub fn quota_of(&self, target: &TableTarget) -> u32 {
        self.backends
            .iter()
            .find(|b| b.target == *target)
            .map_or(0, |b| b.quota)
    }

    fn target_at(&self, slot: usize) -> Option<TableTarget> {
        let b = *self.slots.get(slot)?;
        self.backends.get(b as usize).map(|b| b.target)
    }
}

/// Builds the table for `shares` (any order; equal targets are merged) with `m` slots.
/// `previous` (the table this one replaces) only feeds the disruption figure: the table itself
/// never depends on it.
/// `m` must be prime for every permutation to visit every slot; sizes that are not are rounded
/// up to the next prime.
pub fn build(m: u32, shares: &[TableShare], previous: Option<&WeightedTable>) -> WeightedTable {
    let m = next_prime(m.max(2));
    let merged = merge(shares);
    let quotas = quotas(m, &merged);
    let backends: Vec<TableBackend> = merged
        .iter()
        .zip(&quotas)
        .filter(|(_, q)| **q > 0)
        .map(|(s, q)| TableBackend {
            target: s.0,
            quota: *q,
        })
        .collect();
    let slots = fill(m, &backends);
    let mut table = WeightedTable {
        m,
        backends,
        slots,
        disruption: None,
    };
    table.disruption = previous.filter(|p| p.m == m).map(|p| disruption(p, &table));
    table
}

/// Slots moved from `old` to `new` (same size) and the minimum any table could have moved.
pub fn disruption(old: &WeightedTable, new: &WeightedTable) -> Disruption {
    let moved = (0..new.m as usize)
        .filter(|&s| old.target_at(s) != new.target_at(s))
        .count() as u32;
    let kept: u32 = new
        .backends
        .iter()
        .map(|b| b.quota.min(old.quota_of(&b.target)))
        .sum();
    Disruption {
        moved,
        minimum: new.m - kept.min(new.m),
    }
}

/// Rational shares merged per target, sorted by target.
fn merge(shares: &[TableShare]) -> Vec<(TableTarget, u128, u128)> {
    let mut v: Vec<(TableTarget, u128, u128)> = shares
        .iter()
        .filter(|s| s.den > 0 && s.num > 0)
        .map(|s| (s.target, u128::from(s.num), u128::from(s.den)))
        .collect();
    v.sort_by_key(|a| a.0);
    let mut out: Vec<(TableTarget, u128, u128)> = Vec::with_capacity(v.len());
    for (t, n, d) in v {
        match out.last_mut() {
            Some(last) if last.0 == t => {
                let (num, den) = match (
                    n.checked_mul(last.2),
                    last.1.checked_mul(d),
                    d.checked_mul(last.2),
                ) {
                    (Some(a), Some(b), Some(den)) => (a + b, den),
                    // Only an absurd number of duplicates overflows; keep the larger share then.
                    _ => (n.max(last.1), d.min(last.2)),
                };
                let g = gcd(num, den).max(1);
                last.1 = num / g;
                last.2 = den / g;
            }
            _ => out.push((t, n, d)),
        }
    }
    out
}

/// Largest-remainder quotas of `m` slots; ties go to the smaller target, so the result does not
/// depend on input order.
fn quotas(m: u32, merged: &[(TableTarget, u128, u128)]) -> Vec<u32> {
    let m128 = u128::from(m);
    let mut q: Vec<u32> = Vec::with_capacity(merged.len());
    let mut rem: Vec<(u128, u128, usize)> = Vec::with_capacity(merged.len());
    for (i, (_, n, d)) in merged.iter().enumerate() {
        let total = m128 * n;
        q.push(u32::try_from((total / d).min(m128)).unwrap_or(m));
        rem.push((total % d, *d, i));
    }
    let assigned: u64 = q.iter().map(|&x| u64::from(x)).sum();
    if assigned > u64::from(m) || merged.is_empty() {
        // Shares over 1 (a caller bug) or nothing at all: fall back to a table that rejects.
        return q.iter().map(|_| 0).collect();
    }
    let mut deficit = u64::from(m) - assigned;
    rem.sort_by(|a, b| (b.0 * a.1).cmp(&(a.0 * b.1)).then(a.2.cmp(&b.2)));
    while deficit > 0 {
        for &(_, _, i) in &rem {
            if deficit == 0 {
                break;
            }
            q[i] += 1;
            deficit -= 1;
        }
    }
    q
}

/// A backend's turn in the fill: the next claim is due at virtual time (claims + 1) / quota.
struct Turn {
    claims: u64,
    quota: u64,
    index: usize,
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest virtual time (then the smaller index, i.e.
        // the smaller target) must compare greatest.
        let a = (self.claims + 1) * other.quota;
        let b = (other.claims + 1) * self.quota;
        b.cmp(&a).then(other.index.cmp(&self.index))
    }
}

const EMPTY: u32 = u32::MAX;

/// Fills `m` slots with exact quotas, Maglev-style: each backend walks its own permutation of
/// the slots, claiming the first free one, in turns proportional to its quota (stride
/// scheduling), so a weight change behaves like adding or removing a small backend.
///
/// The table is a pure function of the backends and their quotas, never of an earlier table:
/// every node computes the same table whatever sequence of plans it saw (a restarted agent, a
/// node that joined late), so a flow that moves between nodes still reaches the same backend.
/// Remembering the previous table would move fewer slots on a change, but two nodes would then
/// disagree after different histories.
fn fill(m: u32, backends: &[TableBackend]) -> Vec<u32> {
    let mut slots = vec![EMPTY; m as usize];
    if backends.is_empty() {
        return slots;
    }
    let mut filled = 0u32;
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let id = identity(&b.target);
            let offset = hash(&id, 0x9e37_79b9_7f4a_7c15) % u64::from(m);
            let skip = hash(&id, 0xc2b2_ae3d_27d4_eb4f) % u64::from(m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut heap: BinaryHeap<Turn> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.quota > 0)
        .map(|(index, b)| Turn {
            claims: 0,
            quota: u64::from(b.quota),
            index,
        })
        .collect();
    while filled < m
        && let Some(mut turn) = heap.pop()
    {
        let (offset, skip) = perms[turn.index];
        // Each permutation visits every slot (m prime), so an empty one is always found while
        // any is left; the bound only guards against a non-prime m.
        for _ in 0..m {
            let slot = ((offset + next[turn.index] * skip) % u64::from(m)) as usize;
            next[turn.index] += 1;
            if slots[slot] == EMPTY {
                slots[slot] = turn.index as u32;
                filled += 1;
                break;
            }
        }
        turn.claims += 1;
        if turn.claims < turn.quota && filled < m {
            heap.push(turn);
        }
    }
    // Quotas add up to m, so this only happens for a non-prime m; those slots reject.
    if let Some(reject) = backends
        .iter()
        .position(|b| b.target == TableTarget::Reject)
    {
        slots
            .iter_mut()
            .filter(|s| **s == EMPTY)
            .for_each(|s| *s = reject as u32);
    } else {
        slots
            .iter_mut()
            .filter(|s| **s == EMPTY)
            .for_each(|s| *s = 0);
    }
    slots
}

/// The stable identity bytes of a target: the IPv4-mapped address and the port.
fn identity(t: &TableTarget) -> [u8; 18] {
    let mut id = [0xffu8; 18];
    if let TableTarget::Endpoint(a) = t {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        id[..16].copy_from_slice(&ip.octets());
        id[16..].copy_from_slice(&a.port().to_be_bytes());
    }
    id
}

/// FNV-1a then a splitmix64 finaliser: stable across Rust versions and platforms (std's
/// hashers are not), which the cross-node determinism needs.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

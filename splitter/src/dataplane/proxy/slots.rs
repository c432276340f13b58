//! Counted slots keyed by address: connections per client source (taken at accept) and
//! connections per backend endpoint (taken before connecting). A slot is a guard: the count
//! goes down when it is dropped, wherever the connection it stands for ends (a pooled idle
//! connection, an upgraded tunnel).

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

/// Up to `max` holders per key at once; `max == 0` means no limit (and no bookkeeping).
#[derive(Debug)]
struct Counted<K> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Copy> Counted<K> {
    fn new(max: usize) -> Self {
        Self {
            max,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn try_take(&self, key: K) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: K) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&key);
            }
        }
    }

    fn count(&self, key: K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).copied().unwrap_or(0)
    }
}

/// The unit a per-source limit counts: an IPv4 address, or the /64 of an IPv6 address (one
/// IPv6 client usually holds a whole /64, and would otherwise have 2^64 separate limits).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        Self(match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
            v4 => v4,
        })
    }
}

/// Client connections per source, across every listener of a proxy.
#[derive(Clone, Debug)]
pub struct SourceSlots(Arc<Counted<SourceKey>>);

impl SourceSlots {
    /// At most `max` connections per source at once; 0: no limit.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Counted::new(max)))
    }

    /// A slot for one more connection from `ip`, or `None` when its source is at the limit.
    pub fn acquire(&self, ip: IpAddr) -> Option<SourceSlot> {
        if self.0.max == 0 {
            return Some(SourceSlot(None));
        }
        let key = SourceKey::of(ip);
        self.0
            .try_take(key)
            .then(|| SourceSlot(Some((self.0.clone(), key))))
    }
}

/// One client connection's place in its source's count.
#[derive(Debug)]
pub struct SourceSlot(Option<(Arc<Counted<SourceKey>>, SourceKey)>);

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some((counted, key)) = &self.0 {
            counted.give_back(*key);
        }
    }
}

/// Connections per backend endpoint, across every worker thread of a proxy: a cap on what the
/// proxy as a whole opens to one backend address, whatever its clients do. Any upstream client
/// takes a permit before it connects and keeps it with the connection (idle in a pool
/// included); without one it does not connect.
#[derive(Clone, Debug)]
pub struct EndpointSlots(Arc<Counted<SocketAddr>>);

impl EndpointSlots {
    /// At most `max` connections per endpoint at once; 0: no limit.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Counted::new(max)))
    }

    /// A permit for one more connection to `endpoint`, or `None` when it has `max` already.
    pub fn acquire(&self, endpoint: SocketAddr) -> Option<EndpointPermit> {
        if self.0.max == 0 {
            return Some(EndpointPermit(None));
        }
        self.0
            .try_take(endpoint)
            .then(|| EndpointPermit(Some((self.0.clone(), endpoint))))
    }

    /// Connections to `endpoint` holding a permit now.
    pub fn count(&self, endpoint: SocketAddr) -> usize {
        self.0.count(endpoint)
    }

    pub fn max(&self) -> usize {
        self.0.max
    }
}

/// One backend connection's place in its endpoint's count; released when dropped.
#[derive(Debug)]
pub struct EndpointPermit(Option<(Arc<Counted<SocketAddr>>, SocketAddr)>);

impl Drop for EndpointPermit {
    fn drop(&mut self) {
        if let Some((counted, endpoint)) = &self.0 {
            counted.give_back(*endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_per_address_and_ipv6_per_64() {
        let slots = SourceSlots::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let (s1, s2) = (slots.acquire(a).unwrap(), slots.acquire(a).unwrap());
        assert!(slots.acquire(a).is_none(), "a third from the same source");
        assert!(slots.acquire(b).is_some(), "another source is not affected");
        drop(s1);
        assert!(slots.acquire(a).is_some(), "a freed slot is taken again");
        drop(s2);

        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _x = slots.acquire(v6("2001:db8::1")).unwrap();
        let _y = slots.acquire(v6("2001:db8::ffff:1")).unwrap();
        assert!(
            slots.acquire(v6("2001:db8::2:2")).is_none(),
            "one /64 is one source"
        );
        assert!(slots.acquire(v6("2001:db8:0:1::1")).is_some());
        assert_eq!(
            SourceKey::of(v6("::ffff:192.0.2.1")),
            SourceKey::of(a),
            "an IPv4-mapped address is its IPv4 source"
        );
    }

    #[test]
    fn endpoint_permits_cap_and_release() {
        let slots = EndpointSlots::new(1);
        let e: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let p = slots.acquire(e).unwrap();
        assert!(slots.acquire(e).is_none());
        assert_eq!(slots.count(e), 1);
        drop(p);
        assert_eq!(slots.count(e), 0);
        assert!(slots.acquire(e).is_some());
        let unlimited = EndpointSlots::new(0);
        let held: Vec<_> = (0..100).map(|_| unlimited.acquire(e).unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}

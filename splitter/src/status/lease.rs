//! One status writer per cluster, elected with a `coordination.k8s.io` Lease.
//!
//! Written with plain `Api<Lease>` calls (get, create, replace with the resourceVersion read)
//! rather than `kube-leader-election` or `kube-lease-manager`: the protocol is four calls, the
//! mock-API tests pin every one of them, and it adds no dependency that must track kube's
//! major versions. Expiry follows client-go: a lease is taken over only after its record has
//! stayed unchanged for a whole lease duration *on our clock*, so clock skew between nodes
//! cannot make two holders.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{GetParams, ObjectMeta, PostParams},
};
use thiserror::Error;
use tokio::{sync::watch, time::Instant};

#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("reading Lease {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing Lease {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This agent's identity (the node name).
    pub identity: String,
    pub duration: Duration,
    /// How often the holder renews and the others look again.
    pub renew_every: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

pub const DEFAULT_LEASE_NAME: &str = "splitter-status-writer";

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it over.
    Take,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Decides from the Lease as read and how long its record has been unchanged on our clock.
pub fn decide(
    current: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = current else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Take,
        Some(h) if h == me => Decision::Renew,
        Some(h) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for >= duration {
                Decision::Take
            } else {
                Decision::Follow {
                    holder: h.to_string(),
                }
            }
        }
    }
}

/// Campaigns for and holds the Lease, publishing whether we hold it, until `leader` has no
/// receivers. Any failed round counts as not holding it: a writer that cannot renew must stop
/// writing before another may take over.
pub async fn run(api: Api<Lease>, config: LeaseConfig, leader: watch::Sender<bool>) {
    let mut elector = Elector {
        api,
        config,
        seen: None,
        holding: false,
    };
    loop {
        let holding = match elector.round().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("lease: {e}");
                false
            }
        };
        elector.holding = holding;
        leader.send_if_modified(|l| {
            if *l != holding {
                tracing::info!(leader = holding, "lease: status writer leadership changed");
                *l = holding;
                true
            } else {
                false
            }
        });
        if leader.is_closed() {
            return;
        }
        tokio::time::sleep(elector.config.renew_every).await;
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The resourceVersion last read and when we first saw it.
    seen: Option<(String, Instant)>,
    /// Whether the last round ended holding the Lease.
    holding: bool,
}

impl Elector {
    /// One look at the Lease; returns whether we hold it afterwards.
    async fn round(&mut self) -> Result<bool, LeaseError> {
        let c = &self.config;
        // Every node looks every `renew_every`: thousands of followers must not each cost a
        // quorum read of etcd, so they read the API server's cache (`resourceVersion=0`). A
        // stale copy is safe: it can only delay a takeover, or make one fail with 409 (the
        // replace carries the version read). The holder reads the latest, or its renewal
        // would lose to its own previous write.
        let params = if self.holding {
            GetParams::default()
        } else {
            GetParams::any()
        };
        let current = match self.api.get_with(&c.name, &params).await {
            Ok(l) => Ok(Some(l)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        };
        let current = current.map_err(|source| LeaseError::Get {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            source,
        })?;
        let now = Instant::now();
        let rv = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let unchanged_for = match (&self.seen, &rv) {
            (Some((seen, since)), Some(rv)) if seen == rv => now.duration_since(*since),
            _ => {
                self.seen = rv.clone().map(|rv| (rv, now));
                Duration::ZERO
            }
        };
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &c.identity,
            unchanged_for,
            c.duration,
        );
        let stamp = MicroTime(Timestamp::now());
        let write = match decision {
            Decision::Follow { holder } => {
                tracing::debug!(%holder, "lease: held by another agent");
                return Ok(false);
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(c.name.clone()),
                        namespace: Some(c.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(stamp, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Renew | Decision::Take => {
                let mut lease = current.unwrap_or_default();
                let old = lease.spec.take().unwrap_or_default();
                let spec = if decision == Decision::Renew {
                    LeaseSpec {
                        renew_time: Some(stamp),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        ..old
                    }
                } else {
                    self.spec(stamp, old.lease_transitions.unwrap_or(0) + 1)
                };
                lease.spec = Some(spec);
                // The resourceVersion read makes this a compare-and-swap: a 409 means another
                // agent wrote first.
                self.api
                    .replace(&c.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match write {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(source) => Err(LeaseError::Write {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                source,
            }),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn spec(&self, stamp: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(stamp.clone()),
            renew_time: Some(stamp),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(h: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: h.map(str::to_string),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Create);
        assert_eq!(
            decide(Some(&held_by(Some("a"))), "a", Duration::ZERO, D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held_by(None)), "a", Duration::ZERO, D),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&held_by(Some("b"))), "a", Duration::from_secs(14), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held_by(Some("b"))), "a", Duration::from_secs(15), D),
            Decision::Take
        );
    }

    #[test]
    fn the_lease_duration_of_the_record_wins() {
        let mut spec = held_by(Some("b"));
        spec.lease_duration_seconds = Some(60);
        assert_eq!(
            decide(Some(&spec), "a", Duration::from_secs(30), D),
            Decision::Follow { holder: "b".into() }
        );
    }
}

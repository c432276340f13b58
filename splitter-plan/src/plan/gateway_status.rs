//! Gateway and listener statuses: one function per condition.

use std::collections::HashMap;

use super::{
    gateways::GatewayListener,
    status::{Condition, GatewayStatus, ListenerStatus, reason},
};

/// The status of every Gateway with listeners in the plan. `dataplane` holds each Gateway
/// listener's `DataplaneMode` condition, by its index in `listeners`.
pub(crate) fn gateways(
    listeners: &[GatewayListener<'_>],
    dataplane: &mut HashMap<usize, Condition>,
) -> Vec<GatewayStatus> {
    let mut out: Vec<GatewayStatus> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let g = l.gateway;
        if out.last().is_none_or(|s| s.gateway != l.gateway_ref) {
            out.push(GatewayStatus {
                gateway: l.gateway_ref.clone(),
                addresses: g.addresses.iter().map(ToString::to_string).collect(),
                conditions: Vec::new(),
                listeners: Vec::new(),
            });
        }
        let generation = g.meta.generation;
        let mut conditions = vec![
            listener_accepted(l, generation),
            listener_resolved_refs(l, generation),
            listener_conflicted(l, generation),
            programmed(l.usable(), &not_programmed(l), generation),
        ];
        conditions.extend(dataplane.remove(&i));
        if let Some(status) = out.last_mut() {
            status.listeners.push(ListenerStatus {
                name: l.listener.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached_routes,
                conditions,
            });
        }
    }
    for s in &mut out {
        let first = listeners.iter().find(|l| l.gateway_ref == s.gateway);
        let generation = first.map_or(1, |l| l.gateway.meta.generation);
        let unsupported = first
            .map(|l| l.gateway.unsupported_addresses.clone())
            .unwrap_or_default();
        let accepted = gateway_accepted(&s.listeners, &unsupported, generation);
        let programmed = programmed(
            accepted.is_true(),
            "the Gateway is not accepted",
            generation,
        );
        s.conditions = vec![accepted, programmed];
    }
    out
}

/// Why a listener the data plane does not serve is not programmed: the refusal of its port,
/// when that is why, so `Programmed` alone tells an operator what to fix.
fn not_programmed(l: &GatewayListener<'_>) -> String {
    match (&l.class, &l.conflict, &l.unavailable, &l.tls_refused) {
        (Some(_), None, Some(why), _) => format!("listener is not accepted: {why}"),
        (Some(_), None, None, Some((_, why))) => {
            format!("its certificates do not resolve: {why}")
        }
        _ => "listener is not accepted".to_string(),
    }
}

/// `Accepted` of a listener: its protocol is served and it does not conflict.
fn listener_accepted(l: &GatewayListener<'_>, generation: i64) -> Condition {
    match (&l.class, &l.conflict) {
        // A conflict first: a TLS Terminate listener next to a Passthrough one conflicts.
        (_, Some((r, msg))) => Condition::new(reason::ACCEPTED, false, r, msg.clone(), generation),
        // The spec's word for a TLS listener whose mode is not supported (upstream
        // `TLSRouteListenerTerminateNotSupported`).
        (None, None) if l.listener.protocol == "TLS" => Condition::new(
            reason::ACCEPTED,
            false,
            reason::UNSUPPORTED_VALUE,
            "TLS with tls.mode Terminate is not supported (Passthrough is)",
            generation,
        ),
        (None, None) => Condition::new(
            reason::ACCEPTED,
            false,
            reason::UNSUPPORTED_PROTOCOL,
            match &l.listener.tls {
                Some(t) if l.listener.protocol == "HTTPS" => format!(
                    "HTTPS with tls.mode {:?} is not supported (Terminate is)",
                    t.mode
                ),
                _ => format!(
                    "protocol {} is not supported (HTTP, HTTPS, TLS, TCP and UDP are)",
                    l.listener.protocol
                ),
            },
            generation,
        ),
        (Some(_), None) => match &l.unavailable {
            Some(why) => Condition::new(
                reason::ACCEPTED,
                false,
                reason::PORT_UNAVAILABLE,
                why.clone(),
                generation,
            ),
            None => Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "", generation),
        },
    }
}

/// `ResolvedRefs` of a listener: its certificates resolve and every route kind it allows is
/// one we serve there.
fn listener_resolved_refs(l: &GatewayListener<'_>, generation: i64) -> Condition {
    if let Some((r, msg)) = &l.tls_refused {
        Condition::new(reason::RESOLVED_REFS, false, r, msg.clone(), generation)
    } else if l.invalid_kinds.is_empty() {
        Condition::new(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "",
            generation,
        )
    } else {
        Condition::new(
            reason::RESOLVED_REFS,
            false,
            reason::INVALID_ROUTE_KINDS,
            format!(
                "route kinds not supported here: {}",
                l.invalid_kinds.join(", ")
            ),
            generation,
        )
    }
}

/// `Conflicted` of a listener: another listener already holds its address and port.
fn listener_conflicted(l: &GatewayListener<'_>, generation: i64) -> Condition {
    match &l.conflict {
        Some((r, msg)) => Condition::new(reason::CONFLICTED, true, r, msg.clone(), generation),
        None => Condition::new(
            reason::CONFLICTED,
            false,
            reason::NO_CONFLICTS,
            "",
            generation,
        ),
    }
}

/// `Accepted` of a Gateway: its addresses are supported and at least one listener is valid.
fn gateway_accepted(
    listeners: &[ListenerStatus],
    unsupported_addresses: &[String],
    generation: i64,
) -> Condition {
    let valid = listeners
        .iter()
        .filter(|l| {
            l.conditions
                .iter()
                .any(|c| c.type_ == reason::ACCEPTED && c.is_true())
        })
        .count();
    if !unsupported_addresses.is_empty() {
        Condition::new(
            reason::ACCEPTED,
            false,
            reason::UNSUPPORTED_ADDRESS,
            format!(
                "only IPAddress addresses are supported, not {}",
                unsupported_addresses.join(", ")
            ),
            generation,
        )
    } else if valid == listeners.len() {
        Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "", generation)
    } else if valid > 0 {
        Condition::new(
            reason::ACCEPTED,
            true,
            reason::LISTENERS_NOT_VALID,
            format!(
                "{} of {} listeners are not valid",
                listeners.len() - valid,
                listeners.len()
            ),
            generation,
        )
    } else {
        Condition::new(
            reason::ACCEPTED,
            false,
            reason::LISTENERS_NOT_VALID,
            "no listener is valid",
            generation,
        )
    }
}

/// `Programmed`: true when `ok`, else false (`Invalid`) with `why_not`. Gateways and listeners
/// are programmed exactly when they are accepted: the data plane serves whatever is accepted.
fn programmed(ok: bool, why_not: &str, generation: i64) -> Condition {
    if ok {
        Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "", generation)
    } else {
        Condition::new(
            reason::PROGRAMMED,
            false,
            reason::INVALID,
            why_not,
            generation,
        )
    }
}

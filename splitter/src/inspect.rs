//! `splitter inspect`: the live kernel state, read from the pinned maps, as text.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{Map, MapData};
use splitter_common::{
    DestKey, ParseOutcome,
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    maps::{DEST_STATS, PARSE_STATS},
};

use crate::dataplane::ebpf::{read_dest_stats, read_l4_state, read_parse_stats};

fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the agent running with --pin-dir {}?)",
            path.display(),
            pin_dir.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("reading map type of {}", path.display()))
}

/// A destination key as an operator reads it: `10.0.0.1:80/tcp`, `[fd00::1]:53/udp`.
pub fn format_dest(key: &DestKey) -> String {
    let ip = IpAddr::from(key.addr).to_canonical();
    let proto = match key.proto {
        IPPROTO_TCP => "tcp".to_owned(),
        IPPROTO_UDP => "udp".to_owned(),
        p => format!("proto{p}"),
    };
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{}/{proto}", key.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}/{proto}", key.port),
    }
}

pub fn render(pin_dir: &Path) -> anyhow::Result<String> {
    let parse = read_parse_stats(&open_pinned(pin_dir, PARSE_STATS)?)?;
    let dests = read_dest_stats(&open_pinned(pin_dir, DEST_STATS)?)?;
    let mut out = String::new();
    writeln!(out, "pin dir: {}", pin_dir.display())?;
    writeln!(out, "parse outcomes:")?;
    for outcome in ParseOutcome::ALL {
        writeln!(out, "  {:<16} {}", outcome.name(), parse.get(outcome))?;
    }
    let l4 = read_l4_state(&|name| open_pinned(pin_dir, name))?;
    writeln!(
        out,
        "l4 routes ({}), tracked flows {} ({} source-NATed to remote backends):",
        l4.routes.len(),
        l4.flows,
        l4.snat_flows
    )?;
    for r in &l4.routes {
        writeln!(
            out,
            "  route {} [{}] table {} slots, half {}, generation {}; packets {} bytes {} new flows {} rejects {}",
            r.route_id,
            r.vips.join(", "),
            r.table_size,
            r.active_half,
            r.generation,
            r.packets,
            r.bytes,
            r.new_flows,
            r.rejects
        )?;
        for s in &r.shares {
            let who = s
                .addr
                .map_or_else(|| "REJECT".to_owned(), |a| a.to_string());
            let pct = 100.0 * f64::from(s.slots) / f64::from(r.table_size.max(1));
            let remote = if s.remote { ", remote" } else { "" };
            writeln!(
                out,
                "    {who:<44} {pct:6.2}%  ({} slots, {}{remote})",
                s.slots, s.state
            )?;
        }
    }
    writeln!(
        out,
        "half-open flows {}; flood threshold {}/s per CPU (under flood now: {} of {} CPUs, \
         new flows this second per CPU {:?}); new flows per source {}/s, burst {}",
        l4.half_open_flows,
        l4.flood_threshold,
        l4.cpus_under_flood,
        l4.new_flows_per_cpu.len(),
        l4.new_flows_per_cpu,
        l4.source_rate,
        l4.source_burst
    )?;
    writeln!(out, "l4 events:")?;
    for (name, n) in &l4.events {
        writeln!(out, "  {name:<20} {n}")?;
    }
    writeln!(out, "destinations ({}):", dests.len())?;
    for d in &dests {
        writeln!(
            out,
            "  {:<44} packets {:>10}  bytes {:>12}",
            format_dest(&d.key),
            d.stats.packets,
            d.stats.bytes
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_format_like_socket_addresses() {
        assert_eq!(
            format_dest(&DestKey::v4([10, 0, 0, 1], 80, IPPROTO_TCP)),
            "10.0.0.1:80/tcp"
        );
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        assert_eq!(
            format_dest(&DestKey::v6(v6, 53, IPPROTO_UDP)),
            "[fd00::1]:53/udp"
        );
        assert_eq!(
            format_dest(&DestKey::v4([1, 2, 3, 4], 0, 1)),
            "1.2.3.4:0/proto1"
        );
    }
}

//! Without `--iface`, the agent attaches to the interface of the default route (IPv4, else
//! IPv6) of its network namespace: on a node that is the NIC holding the node's address, so the
//! DaemonSet needs no per-node setting. Read from `/proc/net/route` and `/proc/net/ipv6_route`,
//! which show the reading process's network namespace.

/// RTF_UP: the route is usable.
const RTF_UP: u32 = 0x0001;
/// RTF_REJECT: an unreachable route (the kernel's IPv6 table holds such defaults on `lo`).
const RTF_REJECT: u32 = 0x0200;

/// The interface of the lowest-metric IPv4 default route in `/proc/net/route` text.
pub fn from_ipv4_routes(text: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            let (iface, dest, flags, metric, mask) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = *dest == "00000000" && *mask == "00000000";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0)
                .then(|| Some((metric.parse::<u32>().ok()?, (*iface).to_owned())))
                .flatten()
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The interface of the lowest-metric IPv6 default route in `/proc/net/ipv6_route` text.
pub fn from_ipv6_routes(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest plen src plen nexthop metric refcnt use flags iface
            let (dest, plen, metric, flags, iface) =
                (f.first()?, f.get(1)?, f.get(5)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = dest.bytes().all(|b| b == b'0') && *plen == "00";
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && *iface != "lo")
                .then(|| Some((u32::from_str_radix(metric, 16).ok()?, (*iface).to_owned())))
                .flatten()
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The interface of this network namespace's default route, IPv4 first.
pub fn default_route_iface() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    from_ipv4_routes(&read("/proc/net/route"))
        .or_else(|| from_ipv6_routes(&read("/proc/net/ipv6_route")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_metric_usable_ipv4_default_wins() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0100000A\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth2\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
bad\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0
";
        assert_eq!(from_ipv4_routes(text).as_deref(), Some("eth0"));
        assert_eq!(from_ipv4_routes("Iface\tDestination\n"), None);
    }

    #[test]
    fn an_ipv6_default_on_lo_is_the_unreachable_one() {
        let zero = "00000000000000000000000000000000";
        let text = format!(
            "{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo
fd000000000000000000000000000000 40 {zero} 00 {zero} 00000100 00000001 00000000 00000001     eth0
{zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
"
        );
        assert_eq!(from_ipv6_routes(&text).as_deref(), Some("eth0"));
        assert_eq!(
            from_ipv6_routes(&text.replace("    eth0\n", "    lo\n")),
            None
        );
    }
}

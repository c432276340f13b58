//! The shape every multi-namespace test, benchmark and demo of the project uses: a client
//! namespace, a gateway namespace that routes between the client and the backends (where the
//! agent or a peer data plane runs, as on a node), and backend namespaces, each linked to the
//! gateway by its own veth pair with its default route through the gateway.
//!
//! Nothing routes outside these namespaces: the client reaches only the gateway's subnet and
//! the backends only the gateway, so no test traffic can leave for another address.

use std::io;

use crate::{NetNs, VethPair};

/// The IPv4 addresses of a [`GatewayNet`]: the client is `{front}.1/24` and the gateway
/// `{front}.2/24`; backend `i` is `{backends}.{first + i}.2/24`, its gateway side `.1`.
/// Each user picks its own prefixes, so topologies of parallel tests never overlap.
#[derive(Clone, Copy, Debug)]
pub struct AddressPlan {
    /// The first three octets of the client-gateway subnet, e.g. `"10.210.0"`.
    pub front: &'static str,
    /// The first two octets of the backend subnets, e.g. `"10.211"`.
    pub backends: &'static str,
    /// The third octet of backend 0's subnet.
    pub first: u8,
}

impl AddressPlan {
    pub fn client(&self) -> String {
        format!("{}.1", self.front)
    }

    pub fn gateway(&self) -> String {
        format!("{}.2", self.front)
    }

    /// Backend `i`'s address.
    pub fn backend(&self, i: usize) -> String {
        format!("{}.{}.2", self.backends, self.subnet(i))
    }

    /// The gateway's address on backend `i`'s link: that backend's default route.
    pub fn backend_gateway(&self, i: usize) -> String {
        format!("{}.{}.1", self.backends, self.subnet(i))
    }

    fn subnet(&self, i: usize) -> usize {
        usize::from(self.first) + i
    }
}

/// Client, gateway and backends in their own namespaces (see the module). Dropping it removes
/// the namespaces and with them every link; processes started in them are the caller's to stop
/// first.
pub struct GatewayNet {
    pub client: NetNs,
    pub gateway: NetNs,
    /// Client end `a`, gateway end `b`: where a gateway's ingress programs attach.
    pub front: VethPair,
    pub backends: Vec<NetNs>,
    /// Gateway end `a`, backend end `b`, one per backend.
    pub backend_links: Vec<VethPair>,
    pub plan: AddressPlan,
}

impl GatewayNet {
    /// Creates the namespaces (names start with `tag`), links and routes, and turns IPv4
    /// forwarding on in the gateway.
    pub fn new(tag: &str, plan: AddressPlan, backends: usize) -> io::Result<Self> {
        let client = NetNs::new(&format!("{tag}c"))?;
        let gateway = NetNs::new(&format!("{tag}g"))?;
        let front = VethPair::new(
            &client,
            &[&format!("{}/24", plan.client())],
            &gateway,
            &[&format!("{}/24", plan.gateway())],
        )?;
        gateway.sysctl("net/ipv4/ip_forward", "1")?;
        let mut net = GatewayNet {
            client,
            gateway,
            front,
            backends: Vec::with_capacity(backends),
            backend_links: Vec::with_capacity(backends),
            plan,
        };
        for i in 0..backends {
            let ns = NetNs::new(&format!("{tag}b"))?;
            let via = plan.backend_gateway(i);
            net.backend_links.push(VethPair::new(
                &net.gateway,
                &[&format!("{via}/24")],
                &ns,
                &[&format!("{}/24", plan.backend(i))],
            )?);
            ns.ip(&["route", "add", "default", "via", &via])?;
            net.backends.push(ns);
        }
        Ok(net)
    }

    /// Makes the client put complete checksums on the wire, as a NIC delivers them. XDP sees
    /// the bytes as sent, and a local sender on a veth otherwise leaves the TCP/UDP checksum
    /// to an offload that never comes (CHECKSUM_PARTIAL).
    pub fn client_sends_full_checksums(&self) -> io::Result<()> {
        self.client
            .exec("ethtool", &["-K", &self.front.a, "tx", "off"])
            .map(drop)
    }

    /// The gateway's client-facing interface.
    pub fn gateway_iface(&self) -> &str {
        &self.front.b
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, TcpListener, TcpStream},
        time::Duration,
    };

    use super::*;

    #[test]
    fn the_plan_numbers_backends_from_first() {
        let p = AddressPlan {
            front: "10.200.0",
            backends: "10.201",
            first: 1,
        };
        assert_eq!(p.client(), "10.200.0.1");
        assert_eq!(p.gateway(), "10.200.0.2");
        assert_eq!(p.backend(0), "10.201.1.2");
        assert_eq!(p.backend_gateway(1), "10.201.2.1");
    }

    #[test]
    fn client_reaches_each_backend_through_the_gateway() {
        if !crate::require_root("client_reaches_each_backend_through_the_gateway") {
            return;
        }
        let plan = AddressPlan {
            front: "10.202.0",
            backends: "10.203",
            first: 0,
        };
        let net = GatewayNet::new("tg", plan, 2).expect("topology");
        net.client
            .ip(&["route", "add", "10.203.0.0/16", "via", &plan.gateway()])
            .expect("route");
        for (i, ns) in net.backends.iter().enumerate() {
            let at = SocketAddr::new(plan.backend(i).parse().expect("ip"), 9);
            let listener = ns.run(|| TcpListener::bind(at).expect("listen"));
            let connected = net
                .client
                .run(|| TcpStream::connect_timeout(&at, Duration::from_secs(5)));
            assert!(connected.is_ok(), "backend {i} unreachable: {connected:?}");
            drop(listener);
        }
    }
}

//! Ports a listener on the node's own addresses may not take. Such a listener is served on every
//! node (the kernel path intercepts its port before the node's stack sees it), so taking a port a
//! host socket listens on (sshd's 22, the kubelet's 10250), the ephemeral range (the replies of
//! the node's own outgoing connections), the NodePort range or the SNAT range would take that
//! traffic away from the node.

use std::collections::BTreeMap;

use super::Transport;

/// A range of ports and what it is for, as a listener's condition names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedPorts {
    pub first: u16,
    pub last: u16,
    /// E.g. "the node's ephemeral port range".
    pub what: String,
}

/// What the node holds. The agent fills it from its own node; the default refuses nothing, as
/// for `splitter check`, which knows no node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePorts {
    pub reserved: Vec<ReservedPorts>,
    /// Ports host sockets (not the agent's own) listen on or are bound to, with who holds them
    /// when known.
    pub host: BTreeMap<(Transport, u16), String>,
}

impl NodePorts {
    /// Why a listener on the node's addresses may not take `port`, if it may not.
    pub fn refusal(&self, transport: Transport, port: u16) -> Option<String> {
        if let Some(holder) = self.host.get(&(transport, port)) {
            let proto = match transport {
                Transport::Tcp => "TCP",
                Transport::Udp => "UDP",
            };
            return Some(format!(
                "{proto} port {port} is held by a socket on the node ({holder}); a listener on the node's addresses would take its traffic"
            ));
        }
        self.reserved
            .iter()
            .find(|r| (r.first..=r.last).contains(&port))
            .map(|r| {
                format!(
                    "port {port} is in {} ({}-{}), which listeners on the node's addresses may not take",
                    r.what, r.first, r.last
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sockets_and_ranges_refuse_with_the_reason() {
        let ports = NodePorts {
            reserved: vec![ReservedPorts {
                first: 30000,
                last: 32767,
                what: "the NodePort range".into(),
            }],
            host: BTreeMap::from([((Transport::Tcp, 22), "sshd".to_string())]),
        };
        assert!(ports.refusal(Transport::Tcp, 22).unwrap().contains("sshd"));
        assert_eq!(ports.refusal(Transport::Udp, 22), None);
        assert!(
            ports
                .refusal(Transport::Udp, 30000)
                .unwrap()
                .contains("NodePort range (30000-32767)")
        );
        assert_eq!(ports.refusal(Transport::Tcp, 29999), None);
        assert_eq!(NodePorts::default().refusal(Transport::Tcp, 22), None);
    }
}

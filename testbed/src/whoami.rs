//! A tiny TCP server that tells who answered and what source it saw, so a test can tell which
//! pod (or node) a connection reached and whether anything rewrote the client's address.
//!
//! Each accepted connection gets one line, `pod=<name> peer=<ip>:<port>\n` (an IPv6 peer as
//! `[ip]:port`, an IPv4 peer never as a v4-mapped IPv6 address), and is closed.

use std::{
    io::{self, Read, Write},
    net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::NetNs;

/// A whoami server on `[::]:port` (IPv4 too) inside a namespace; stopped and joined on drop.
pub struct WhoamiServer {
    /// A second handle on the listening socket: shutting it down wakes the blocked `accept`.
    wake: Socket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl WhoamiServer {
    /// Listens in `ns` on `port` (0 picks one, see [`Self::port`]) and answers as `name`. The
    /// socket is bound before this returns, so a client may connect at once.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> io::Result<Self> {
        let listener = ns.run(|| dual_stack_listener(port))?;
        let port = listener.local_addr()?.port();
        let wake = Socket::from(listener.try_clone()?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = ns.spawn({
            let (stop, name) = (Arc::clone(&stop), name.to_owned());
            move || serve(&listener, &name, &stop)
        });
        Ok(WhoamiServer {
            wake,
            stop,
            thread: Some(thread),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for WhoamiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting a listening socket down makes a blocked accept return EINVAL.
        let _ = self.wake.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One socket for both families, so a pod has one server whatever the client speaks.
fn dual_stack_listener(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

fn serve(listener: &TcpListener, name: &str, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, name, peer) {
                    eprintln!("testbed: whoami {name}: answering {peer}: {e}");
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                eprintln!("testbed: whoami {name}: accept: {e}");
                return;
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

fn answer(mut stream: TcpStream, name: &str, peer: SocketAddr) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let line = WhoamiReply {
        pod: name.to_owned(),
        peer: canonical(peer),
    };
    stream.write_all(format!("{line}\n").as_bytes())
}

/// An IPv4 client of the dual-stack socket shows as `::ffff:a.b.c.d`; tests compare with the
/// IPv4 address they know.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// What a whoami server answered: who it is (a pod's or node's name) and the source it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoamiReply {
    pub pod: String,
    pub peer: SocketAddr,
}

impl std::fmt::Display for WhoamiReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod={} peer={}", self.pod, self.peer)
    }
}

impl FromStr for WhoamiReply {
    type Err = io::Error;

    fn from_str(line: &str) -> io::Result<Self> {
        let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("whoami: {line:?}"));
        let (pod, peer) = line.trim_end().split_once(' ').ok_or_else(invalid)?;
        let pod = pod.strip_prefix("pod=").ok_or_else(invalid)?;
        let peer = peer.strip_prefix("peer=").ok_or_else(invalid)?;
        Ok(WhoamiReply {
            pod: pod.to_owned(),
            peer: peer.parse().map_err(|_| invalid())?,
        })
    }
}

/// Connects from `ns` to a whoami server at `at` and reads its line; `timeout` bounds the
/// connect and the read each.
pub fn ask_whoami(ns: &NetNs, at: SocketAddr, timeout: Duration) -> io::Result<WhoamiReply> {
    ns.run(|| {
        let mut stream = TcpStream::connect_timeout(&at, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        stream.read_to_string(&mut line)?;
        line.parse()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_line_round_trips() {
        for line in [
            "pod=node1-pod0 peer=10.1.2.3:40000",
            "pod=node2 peer=[fd00::1]:5",
        ] {
            let reply: WhoamiReply = line.parse().expect("parses");
            assert_eq!(reply.to_string(), line);
        }
        assert!("peer=10.1.2.3:1 pod=x".parse::<WhoamiReply>().is_err());
    }

    #[test]
    fn a_mapped_ipv4_peer_is_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().expect("addr");
        assert_eq!(canonical(mapped).to_string(), "10.0.0.1:80");
    }

    #[test]
    fn the_server_names_itself_and_the_peer() {
        if !crate::require_root("the_server_names_itself_and_the_peer") {
            return;
        }
        let ns = NetNs::new("tw").expect("netns");
        ns.ip(&["addr", "add", "fd00:9::1/128", "dev", "lo", "nodad"])
            .expect("v6 on lo");
        let server = WhoamiServer::start(&ns, "me", 0).expect("server");
        for host in ["127.0.0.1", "[fd00:9::1]"] {
            let at = format!("{host}:{}", server.port()).parse().expect("addr");
            let reply = ask_whoami(&ns, at, Duration::from_secs(2)).expect("answer");
            assert_eq!(reply.pod, "me");
            assert_eq!(
                reply.peer.ip(),
                at.ip(),
                "a local client's source is its target"
            );
        }
        drop(server);
    }
}

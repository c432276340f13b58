//! The `splitter-echo` binary as a real process: it prints its address, answers like the
//! guide's pods, echoes other requests, and exits cleanly on SIGTERM.

use std::{process::Stdio, time::Duration};

use crate::support::*;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_binary() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitter-echo"))
        .args(["--listen", "127.0.0.1:0", "--name", "echo-7d9f"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start splitter-echo");
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut first),
    )
    .await
    .expect("splitter-echo prints its address")
    .unwrap();
    let addr: std::net::SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();

    let mut conn = Connection::open(addr).await;
    let r = conn.get("/hostname").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        &r.body[..],
        b"echo-7d9f",
        "the name with no trailing newline"
    );
    let mut req = request("PUT", "/some/path?a=1", "example.test");
    req.headers_mut().insert("x-test", "yes".parse().unwrap());
    let seen = conn.send(req).await.unwrap().echo();
    assert_eq!(seen.name, "echo-7d9f");
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.path, "/some/path");
    assert_eq!(seen.query.as_deref(), Some("a=1"));
    assert_eq!(seen.header("x-test"), vec!["yes"]);
    assert!(seen.peer.starts_with("127.0.0.1:"), "{}", seen.peer);
    drop(conn);

    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

//! PROXY protocol headers that arrive in pieces. Its own test binary: the
//! CPU assertion reads this process's CPU time, which other tests would add to.

mod common;
#[path = "support/custom.rs"]
mod custom;

use std::time::Duration;

use common::*;
use custom::spawn_custom;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_in_pieces_is_waited_for_without_spinning() {
    let cfg = "[server]\nproxy_protocol = true\n[auth]\nusers_file = \"users.toml\"\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[limits]\nheader_read_timeout = \"5s\"\n";
    let proxy = spawn_custom(cfg, &users_toml(&[("alice", "a1")]));
    let origin = spawn_echo_origin();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0").await.unwrap();
    // A stalled partial header must not keep a core busy while it waits.
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let used = cpu_seconds() - before;
    assert!(used < 0.3, "{used:.2} s of CPU while a PROXY header was pending");
    s.write_all(b".0.1 5555 3128\r").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"\n").await.unwrap();
    let mut c = RawConn::from_stream(s);
    c.send(get_as(&origin.url("/"), &origin.authority(), "alice", "a1")).await;
    assert_eq!(c.read_response("GET").await.status, 200);
}

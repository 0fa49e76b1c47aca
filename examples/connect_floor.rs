//! A benchmark reference, not part of authgate: the least a tokio CONNECT
//! proxy can do. It reads the request head, connects to the request line's
//! `host:port`, answers 200 and copies both ways with
//! `tokio::io::copy_bidirectional`. No authentication, no rules, no log, no
//! limits: never expose it.
//!
//! Measured beside authgate and Squid with the shared harness's `external`
//! target, it shows what accepting, connecting, relaying and closing cost on
//! a machine before any proxy logic (README, Performance):
//!
//! ```sh
//! cargo build --release --example connect_floor
//! target/release/examples/connect_floor 127.0.0.1:18700 &
//! ```
//!
//! It listens on loopback only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18700".into());
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("connect_floor: bad address {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("connect_floor: {addr} is not a loopback address");
        std::process::exit(2);
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("connect_floor: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        tokio::spawn(tunnel(client));
    }
}

async fn tunnel(mut client: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while !head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == head.len() {
            return Ok(());
        }
        match client.read(&mut head[n..]).await? {
            0 => return Ok(()),
            r => n += r,
        }
    }
    let line = std::str::from_utf8(&head[..n]).unwrap_or("");
    let mut words = line.split(' ');
    let target = match (words.next(), words.next()) {
        (Some("CONNECT"), Some(t)) => t.to_owned(),
        _ => {
            client
                .write_all(
                    b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
    };
    drop(head);
    let mut origin = match TcpStream::connect(target.as_str()).await {
        Ok(o) => o,
        Err(_) => {
            client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await?;
            return Ok(());
        }
    };
    origin.set_nodelay(true)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    copy_bidirectional(&mut client, &mut origin).await.map(|_| ())
}

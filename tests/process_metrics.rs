//! The process figures on `/metrics`, in a test binary of their own: the
//! open-descriptor count is the whole process's, and the tests of another
//! binary, run at the same time on other threads, opened and closed
//! connections between its readings (it failed so under load).

mod common;

use std::time::Duration;

use common::*;

/// `process_open_fds` counts the descriptors the connections hold (the
/// proxy runs in this test's process, so each connection is two: the
/// client's end and the accepted one), under `process_max_fds`, and falls
/// back once they close. The CPU and memory figures are the kernel's for
/// this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_descriptors_are_scraped() {
    let (run, state) = spawn_with_admin("").await;
    let open = async || scrape(run.admin).await["process_open_fds"];
    let before = open().await;
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(run.proxy).await.unwrap());
    }
    let start = std::time::Instant::now();
    while state.conns.open() < 100 {
        assert!(start.elapsed() < Duration::from_secs(10), "{} accepted", state.conns.open());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let figures = scrape(run.admin).await;
    let during = figures["process_open_fds"];
    assert!(during >= before + 200.0, "{before} then {during}");
    assert!(during <= before + 210.0, "{before} then {during}: only the 100 connections were opened");
    assert!(figures["process_max_fds"] >= during, "{figures:?}");
    // Some CPU used for certain (a fresh process may not have a clock tick
    // yet), then the figure is at least what the kernel counted before.
    let spent = spin_until_cpu(0.05);
    let figures = scrape(run.admin).await;
    let cpu = figures["process_cpu_seconds_total"];
    assert!(cpu >= spent, "{cpu} s, the kernel had counted {spent} s");
    assert!(figures["process_resident_memory_bytes"] > 1_000_000.0, "{figures:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = figures["process_start_time_seconds"];
    assert!(start <= now && now - start < 3600.0, "started at {start}, now {now}");
    drop(held);
    let start = std::time::Instant::now();
    while open().await > before + 20.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "still {} open", open().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps a thread busy until the process has used `seconds` of CPU;
/// returns its CPU time then.
fn spin_until_cpu(seconds: f64) -> f64 {
    let mut x = 0u64;
    loop {
        let now = cpu_seconds();
        if now >= seconds {
            std::hint::black_box(x);
            return now;
        }
        for i in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

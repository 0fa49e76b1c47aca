//! Requests that are not proxy requests get a 400 that says how to use a
//! proxy, as problem+json for tools and as HTML for browsers.

mod common;

use common::*;

const USER: (&str, &str) = ("alice", "alice-pw");

#[tokio::test]
async fn origin_form_request_gets_400_not_a_proxy_request() {
    let proxy = spawn_proxy("", &[USER]);
    let host = proxy.addr.to_string();
    let resp = get(proxy.addr, "/", &[("Host", &host)]).await;
    assert_proxy_error(&resp, 400, "http_request_error", "not_a_proxy_request");
    let detail = resp.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("CONNECT") || detail.contains("HTTP_PROXY"),
        "the detail should say how to use a proxy: {detail}"
    );
}

#[tokio::test]
async fn https_absolute_form_gets_400_unsupported_scheme() {
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let resp =
        get(proxy.addr, "https://example.com/", &[("Host", "example.com"), ("Proxy-Authorization", &auth)])
            .await;
    assert_proxy_error(&resp, 400, "http_request_error", "unsupported_scheme");
    let detail = resp.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("CONNECT"), "the detail should point https users to CONNECT: {detail}");
}

#[tokio::test]
async fn browser_gets_an_html_error_page_with_the_same_code() {
    let proxy = spawn_proxy("", &[USER]);
    let host = proxy.addr.to_string();
    let resp = get(
        proxy.addr,
        "/",
        &[("Host", &host), ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")],
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.dump());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/html"), "content-type {ct:?}");
    assert!(
        resp.header("proxy-status").is_some_and(|v| v.starts_with("authgate; error=")),
        "{}",
        resp.dump()
    );
    let page = resp.text();
    assert!(page.contains("<html"), "{page}");
    assert!(page.contains("not_a_proxy_request"), "{page}");
    let rid = resp.header("x-request-id").expect("x-request-id");
    assert!(page.contains(rid), "the page should show the request id");
}

#[tokio::test]
async fn proxy_still_serves_good_requests_after_bad_ones() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = basic(USER.0, USER.1);
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("GET", "/", &[("Host", "proxy")])).await;
    assert_eq!(conn.read_response("GET").await.status, 400);
    conn.send(request("GET", &origin.url("/ok"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let resp = conn.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
}

//! The dashboard page at `/` in headless Chromium: a server's CPU value appears, then changes when a new
//! sample is committed, without a reload. Leaves a screenshot in `$CARGO_TARGET_TMPDIR/artefacts/`.

use crate::common::spawn_app;
use chrono::Utc;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tributary_testkit::Browser;

const CPU: &str =
    r#"document.querySelector('[data-host="server-1"] [data-field="cpu_usage"] .value')?.textContent ?? null"#;

async fn until(browser: &mut Browser, expression: &str, want: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = browser.eval(expression).await;
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{expression} is {got}, waited for {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_servers_live() {
    let app = spawn_app().await;
    let now = Utc::now().timestamp_millis();
    for (i, host) in ["server-1", "server-2", "server-10"].iter().enumerate() {
        let sample = json!({"ts": now - 5000, "cpu_usage": 11.5 + i as f64, "memory_usage": 40.0, "disk_usage": 70.25});
        app.publish_plain(&format!("metric.{host}"), &sample.to_string()).await;
    }
    for k in 0..30 {
        app.publish_plain(
            "price.ACME",
            &format!(r#"{{"ts":{},"price":{}}}"#, now - 60_000 + k * 1000, 100.0 + k as f64),
        )
        .await;
    }
    app.settled().await;

    let mut browser = Browser::open(&format!("{}/", app.base)).await;
    until(&mut browser, CPU, json!("11.5%")).await;
    let order = r#"[...document.querySelectorAll('[data-host]')].map(e => e.dataset.host).join(',')"#;
    assert_eq!(browser.eval(order).await, "server-1,server-2,server-10", "natural order");
    until(&mut browser, "document.getElementById('live-status').textContent", json!("live")).await;

    // A new sample: the value changes without a reload, once committed.
    let marker = "window.__same_page = true";
    browser.eval(marker).await;
    app.publish_plain("metric.server-1", &json!({"ts": now, "cpu_usage": 77.5, "memory_usage": 41.0}).to_string())
        .await;
    until(&mut browser, CPU, json!("77.5%")).await;
    assert_eq!(browser.eval("window.__same_page === true").await, true, "no reload");
    until(&mut browser, "document.querySelectorAll('#prices > *').length > 0", json!(true)).await;

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artefacts/dashboard.png");
    browser.screenshot(&shot).await;
    let size = std::fs::metadata(&shot).unwrap().len();
    assert!(size > 10_000, "a real screenshot: {size} bytes");
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_fleet_plan_live() {
    let app = spawn_app().await;
    app.publish_plain("fleet.driver.alice", r#"{"name":"Alice Smith"}"#).await;
    app.publish_plain("fleet.driver.bo", r#"{"name":"Bo"}"#).await;
    app.publish_plain("fleet.shipment.s1", r#"{"address":"44 Fake Dr., San Diego, CA"}"#).await;
    app.publish_plain("fleet.shipment.s2", r#"{"address":"9 Oak Ave, Town"}"#).await;
    app.settled().await;

    let mut browser = Browser::open(&format!("{}/", app.base)).await;
    let total = "document.getElementById('fleet')?.dataset.total ?? null";
    let rows = "document.querySelectorAll('#fleet tbody tr').length";
    // Alice Smith takes a 6, Bo the Fake Dr. shipment (2.25): 8.25.
    until(&mut browser, total, json!("8.25")).await;
    assert_eq!(browser.eval(rows).await, 2);
    let drivers =
        r#"[...document.querySelectorAll('#fleet tbody tr td:first-child')].map(e => e.textContent).sort().join(',')"#;
    assert_eq!(browser.eval(drivers).await, "Alice Smith,Bo");

    browser.eval("window.__same_page = true").await;
    app.publish_plain("fleet.driver.alice", r#"{"deleted":true}"#).await;
    until(&mut browser, total, json!("2.25")).await;
    until(&mut browser, rows, json!(1)).await;
    assert_eq!(browser.eval("window.__same_page === true").await, true, "no reload");
    let msg = browser.eval("document.getElementById('fleet-msg').textContent").await;
    assert!(msg.as_str().unwrap().contains("1 shipment(s) without a driver"), "{msg}");
}

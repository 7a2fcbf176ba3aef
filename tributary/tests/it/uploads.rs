//! Uploads over HTTP: a streamed multi-megabyte ports file with progress to the final summary, and
//! online statistics over numbers.

use crate::common::spawn_app;
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// A streamed (chunked) body of `text`, 16 KiB at a time.
fn chunked(text: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// Uploads `body` as `kind`, streamed, and reads the upload's events to the end: (its id, the progress
/// events, the summary).
async fn upload(app: &crate::common::TestApp, kind: &str, body: Vec<u8>) -> (String, Vec<Value>, Value) {
    // A client of its own: a body cut off by the server leaves its connection unusable for the next request.
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/v1/uploads?kind={kind}", app.base)).body(chunked(body)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (progress, summary) = follow(app, &id).await;
    (id, progress, summary)
}

/// Uploads `body` as it streams (a client that may pause or go quiet); the summary once it ends.
async fn upload_stream<S>(app: &crate::common::TestApp, kind: &str, body: S) -> Value
where
    S: futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
{
    let r = reqwest::Client::new()
        .post(format!("{}/v1/uploads?kind={kind}", app.base))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    follow(app, &id).await.1
}

/// Reads an upload's events to the end: (progress events, the summary).
async fn follow(app: &crate::common::TestApp, id: &str) -> (Vec<Value>, Value) {
    let r = app.http.get(format!("{}/v1/uploads/{id}/events", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut text, mut progress) = (String::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let kind = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("");
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let v: Value = serde_json::from_str(data).unwrap();
                if kind == "summary" {
                    return (progress, v);
                }
                progress.push(v);
            }
        }
        panic!("the event stream ended without a summary: {text}")
    })
    .await
    .expect("a summary within 120 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_ports_upload_reports_progress_to_a_committed_summary_with_bounded_memory() {
    let app = spawn_app().await;
    let n = 15_000;
    let mut text = b"{\n".to_vec();
    for i in 0..n {
        let sep = if i + 1 < n { "," } else { "" };
        text.extend_from_slice(
            format!(
                "  \"X{i:05}\": {{\"name\": \"Port number {i} of a generated file, padded to look real\", \"city\": \"City {i}\", \"country\": \"Country {}\", \"coordinates\": [{}, {}], \"alias\": [], \"regions\": [], \"unlocs\": [\"X{i:05}\"], \"timezone\": \"Etc/UTC\"}}{sep}\n",
                i % 40,
                (i % 360) as f64 - 179.5,
                (i % 180) as f64 - 89.5
            )
            .as_bytes(),
        );
    }
    text.extend_from_slice(b"}\n");
    let size = text.len();
    assert!(size > 3_000_000, "multi-megabyte: {size}");
    let (id, progress, summary) = upload(&app, "ports", text).await;
    assert_eq!(summary["state"], "done", "{summary}");
    assert_eq!(summary["bytes"], size as u64);
    assert_eq!((summary["entries"].as_u64(), summary["published"].as_u64()), (Some(n), Some(n)));
    assert_eq!((summary["committed"].as_u64(), summary["dead_letters"].as_u64()), (Some(n), Some(0)), "{summary}");
    assert!(!progress.is_empty(), "progress before the summary");
    let bytes: Vec<u64> = progress.iter().map(|p| p["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "{bytes:?}");
    // Memory: the decoder held at most two 64 KiB chunks, for a file 25 times that.
    let peak = summary["buffer_peak"].as_u64().unwrap();
    assert!(peak <= 2 * 64 * 1024, "buffer peak {peak} for {size} bytes");

    let (_, b) = app.get("/v1/ports?limit=1").await;
    assert_eq!(b["total"], n);
    let (s, status) = app.get(&format!("/v1/uploads/{id}")).await;
    assert_eq!((s.as_u16(), &status), (200, &summary));
    let (s, b) = app.get("/v1/uploads/nope").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (404, Some("not_found")));
    let r = app.http.post(format!("{}/v1/uploads?kind=zip", app.base)).body("x").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbers_upload_ends_with_the_batch_statistics() {
    let app = spawn_app().await;
    let values: Vec<f64> = (0..200_000).map(|i| ((i * 7919) % 10_007) as f64 / 13.0 - 300.0).collect();
    let mut text: String = values.iter().map(|v| format!("{v}\n")).collect();
    text.push_str("not a number\n");
    let (_, _, summary) = upload(&app, "numbers", text.into_bytes()).await;
    let stats = &summary["stats"];
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert_eq!(stats["count"], values.len() as u64);
    assert!((stats["mean"].as_f64().unwrap() - mean).abs() <= 1e-9 * mean.abs().max(1.0), "{stats} vs {mean}");
    assert!((stats["variance"].as_f64().unwrap() - var).abs() <= 1e-9 * var, "{stats} vs {var}");
    assert_eq!(stats["min"].as_f64(), values.iter().copied().reduce(f64::min));
    assert_eq!(stats["max"].as_f64(), values.iter().copied().reduce(f64::max));
    assert_eq!(summary["invalid"], 1);
    assert!(summary["errors"][0].as_str().unwrap().contains("line 200001"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_ndjson_uploads_reach_their_processors_and_name_bad_lines() {
    let app = spawn_app().await;
    let mut csv = String::from("instrument,ts,price,volume\n");
    for i in 0..500 {
        csv.push_str(&format!("CSV{},{},{},10\n", i % 2, 1_767_225_600_000u64 + i * 1000, 100 + i));
    }
    csv.push_str("CSV0,someday,1\n");
    let (_, _, summary) = upload(&app, "prices-csv", csv.into_bytes()).await;
    assert_eq!((summary["published"].as_u64(), summary["committed"].as_u64()), (Some(500), Some(500)), "{summary}");
    assert_eq!(summary["invalid"], 1);
    assert!(summary["errors"][0].as_str().unwrap().starts_with("line 502 (byte "), "{summary}");
    assert!(summary["errors"][0].as_str().unwrap().contains("): bad ts"), "{summary}");
    let (_, s) = app.get("/v1/series/price/CSV1").await;
    assert_eq!(s["points"].as_array().unwrap().len(), 250);

    let ndjson_lines = [
        r#"{"subject":"price.ND","event":{"ts":"2026-01-02","price":5}}"#,
        r#"{"subject":"metric.nd-1","event":{"cpu_usage":12.5}}"#,
        r#"{"subject":"port.NDPRT","event":{"name":"Nd","coordinates":[1,2]}}"#,
        r#"{"subject":"price.ND","event":{"ts":"2026-01-03","price":-1}}"#,
        r#"{"subject":"nope.x","event":{}}"#,
        r#"{"subject":"fleet.driver.nd","event":{"name":"Nd Driver"}}"#,
        r#"not json"#,
        "",
    ];
    let ndjson = ndjson_lines.join("\n");
    let (_, _, summary) = upload(&app, "ndjson", ndjson.into_bytes()).await;
    assert_eq!(summary["published"], 5, "{summary}");
    assert_eq!((summary["committed"].as_u64(), summary["dead_letters"].as_u64()), (Some(4), Some(1)), "{summary}");
    let errors: Vec<&str> = summary["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    // Byte offsets of the lines' first bytes: the lengths of the lines before them, newlines included.
    let offset = |n: usize| ndjson_lines[..n - 1].iter().map(|l| l.len() + 1).sum::<usize>();
    assert!(errors[0].starts_with(&format!("line 5 (byte {}): unknown subject \"nope.x\"", offset(5))), "{errors:?}");
    assert!(errors[1].starts_with(&format!("line 7 (byte {}): expected", offset(7))), "{errors:?}");
    let (s, _) = app.get("/v1/ports/NDPRT").await;
    assert_eq!(s, 200);
    let (_, m) = app.get("/v1/series/metric/nd-1/cpu_usage").await;
    assert_eq!(m["points"][0]["value"], 12.5);
}

/// Every line of an upload is stored, a line repeated in it too: the idempotency key was the line's
/// content, so a price set back within the upload (A, B, A at one date) lost its last line as a repeat of
/// the first, and the series kept B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_keeps_a_price_set_back_to_an_earlier_one() {
    let app = spawn_app().await;
    let a = r#"{"subject":"price.SETBK","event":{"ts":"2026-01-02","price":5}}"#;
    let b = r#"{"subject":"price.SETBK","event":{"ts":"2026-01-02","price":6}}"#;
    let (_, _, summary) = upload(&app, "ndjson", [a, b, a].join("\n").into_bytes()).await;
    assert_eq!(summary["state"], "done", "{summary}");
    assert_eq!((summary["published"].as_u64(), summary["committed"].as_u64()), (Some(3), Some(3)), "{summary}");
    let (_, series) = app.get("/v1/series/price/SETBK").await;
    assert_eq!(series["points"][0]["value"], 5.0, "{series}");
}

/// A problem quoting its entry is kept cut to `MAX_PROBLEM_BYTES`: an entry's subject of 100 kB was kept
/// whole in the status (the last 1,000 are kept, and each is sent with every progress event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploads_problems_are_kept_cut_short() {
    use tributary_api::uploads::MAX_PROBLEM_BYTES;
    let app = spawn_app().await;
    let line = format!(r#"{{"subject":"x{}","event":{{}}}}"#, "a".repeat(100_000));
    let (_, _, summary) = upload(&app, "ndjson", format!("{line}\n{line}\n").into_bytes()).await;
    let errors = summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{}", &summary.to_string()[..2000]);
    for e in errors {
        let e = e.as_str().unwrap();
        assert!(e.starts_with("line 1 (byte 0): unknown subject") || e.starts_with("line 2"), "{}", &e[..100]);
        assert!(e.len() < MAX_PROBLEM_BYTES + 64 && e.ends_with("bytes in all)"), "{} bytes: {}", e.len(), &e[..100]);
    }
}

/// An import goes on past what it cannot take: a CSV line that is not UTF-8 or is too long is refused
/// with its reason, an NDJSON entry larger than NATS takes fails at once with its reason, and the lines
/// after each are published. (The CSV importer stopped at the first bad byte and dropped the rest; the
/// oversized entry was sent again for the whole retry window, after which nothing more was sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_goes_on_past_lines_and_entries_it_cannot_take() {
    let app = spawn_app().await;
    let mut csv = b"UPA,2026-01-01,1\nCAF\xc9,2026-01-01,1\n".to_vec();
    csv.extend(format!("UPA,2026-01-02,{}\n", "1".repeat(70_000)).bytes());
    csv.extend(b"UPA,2026-01-03,3\n");
    let (_, _, summary) = upload(&app, "prices-csv", csv).await;
    assert_eq!((summary["published"].as_u64(), summary["invalid"].as_u64()), (Some(2), Some(2)), "{summary}");
    let errors = summary["errors"].to_string();
    assert!(
        errors.contains("line 2 (byte 17): not UTF-8") && errors.contains("line 3 (byte 35): line longer"),
        "{errors}"
    );
    assert!(summary["error"].is_null(), "{summary}");
    assert_eq!(summary["state"], "done", "refused lines are listed, not lost: {summary}");

    // An event of ~1 MiB: within the importer's line limit, over the server's max_payload with headers.
    let big = format!(r#"{{"cpu_usage":1,"pad":"{}"}}"#, "x".repeat(1_048_470));
    let ndjson = [
        r#"{"subject":"price.UPB","event":{"ts":"2026-01-01","price":1}}"#.to_owned(),
        format!(r#"{{"subject":"metric.big","event":{big}}}"#),
        r#"{"subject":"price.UPB","event":{"ts":"2026-01-02","price":2}}"#.to_owned(),
    ]
    .join("\n");
    let started = std::time::Instant::now();
    let (_, _, summary) = upload(&app, "ndjson", ndjson.into_bytes()).await;
    assert_eq!(summary["published"], 2, "{summary}");
    assert_eq!(summary["error"], "1 entries could not be published", "{summary}");
    assert_eq!(summary["state"], "failed", "an entry lost: {summary}");
    assert!(started.elapsed() < Duration::from_secs(30), "not retried for the whole window: {:?}", started.elapsed());
    let (_, series) = app.get("/v1/series/price/UPB").await;
    assert_eq!(series["points"].as_array().map(Vec::len), Some(2), "the line after it too: {series}");
}

/// An upload cut off (here past `api.max_upload_bytes`, a chunked body declaring no length) ends
/// `failed` with the reason, even after the importer has kept as many refused lines as it keeps. (The
/// read error was kept like a refused line, so past 20 of those it was dropped and the upload ended with
/// no error; and it ended `done`, as it had published something.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_says_so() {
    let app = crate::common::spawn_app_with(|c| c.api.max_upload_bytes = 20_000).await;
    let mut body = "not a price\n".repeat(25);
    while body.len() < 40_000 {
        body.push_str("UPC,2026-01-01,1\n");
    }
    let (_, _, summary) = upload(&app, "prices-csv", body.into_bytes()).await;
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(error.contains("stopped at line") && error.contains("larger than 20000 bytes"), "{summary}");
    // Not `done`: a client reading the state alone took the first half of a file for all of it.
    assert!(summary["published"].as_u64().is_some_and(|n| n > 0), "{summary}");
    assert_eq!(summary["state"], "failed", "{summary}");
}

/// An app whose uploads must send `min_bytes_per_sec` over each window of `idle_secs`.
async fn paced_app(idle_secs: u64, min_bytes_per_sec: u64) -> crate::common::TestApp {
    crate::common::spawn_app_with(|c| {
        c.api.upload_idle_secs = idle_secs;
        c.api.upload_min_bytes_per_sec = min_bytes_per_sec;
    })
    .await
}

/// An upload whose client stops sending (its connection open) ends after `api.upload_idle_secs` with
/// that reason, what came before it published. (It waited for as long as the client kept the
/// connection, holding its upload, its task and its publisher.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_goes_quiet_ends_with_the_reason() {
    // No least rate: only the silence ends it.
    let app = paced_app(1, 0).await;
    let first: Result<Vec<u8>, std::io::Error> = Ok(b"UPQ,2026-01-01,1\n".to_vec());
    let summary =
        upload_stream(&app, "prices-csv", futures::stream::iter([first]).chain(futures::stream::pending())).await;
    assert!(summary["error"].as_str().unwrap_or_default().contains("sent nothing for 1s"), "{summary}");
    assert_eq!((summary["published"].as_u64(), summary["state"].as_str()), (Some(1), Some("failed")), "{summary}");
}

/// An upload whose client sends, but slower than `api.upload_min_bytes_per_sec` over a window of
/// `api.upload_idle_secs`, ends with that reason, what came before it published. (A byte inside each
/// window held one of the `api.max_uploads` slots for as long as the client liked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_least_rate_ends_with_the_reason() {
    let app = paced_app(2, 1000).await;
    // A line every 100 ms: 170 bytes a second.
    let lines = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(format!("UPS,2026-01-{:02},1\n", n % 28 + 1).into_bytes()), n + 1))
    });
    let summary = upload_stream(&app, "prices-csv", lines).await;
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(error.contains("bytes in 2s, under the least of 1000 bytes a second"), "{summary}");
    assert!(summary["published"].as_u64().is_some_and(|n| n > 0), "{summary}");
}

/// At most `api.max_uploads` uploads stream at once: another is refused with a 429 naming the setting
/// until one's body has been read. (Each holds a connection, a task and an importer for as long as its
/// client sends, and nothing bounded how many.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_limit_are_refused_until_one_is_read() {
    let app = crate::common::spawn_app_with(|c| c.api.max_uploads = 1).await;
    let (send, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<u8>, std::io::Error>>();
    send.send(Ok(b"UPL,2026-01-01,1\n".to_vec())).unwrap();
    let open = reqwest::Client::new()
        .post(format!("{}/v1/uploads?kind=prices-csv", app.base))
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        })))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 202);
    let id = open.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (s, b) = app.send(reqwest::Method::POST, "/v1/uploads?kind=numbers", "1\n2\n").await;
    assert_eq!((s.as_u16(), b["error"]["code"].as_str()), (429, Some("too_many_uploads")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("api.max_uploads"), "{b}");
    // Its body ends: the next upload streams.
    drop(send);
    let (_, summary) = follow(&app, &id).await;
    assert_eq!(summary["published"], 1, "{summary}");
    let (s, b) = app.send(reqwest::Method::POST, "/v1/uploads?kind=numbers", "1\n2\n").await;
    assert_eq!(s, 202, "{b}");
}

/// An upload is done once JetStream says the processors have acked all its entries, not when their
/// progress reports add up: a report is a count on core NATS, which a lost report leaves short (the
/// upload then waited its whole settle timeout and said the processors had not reported) and a commit
/// done again after a lost ack counts twice (it was done before its last entries were). Here a report
/// claims every entry committed while no processor runs: the upload stays settling until one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_settles_on_what_jetstream_says_not_on_the_reports() {
    let mut app = spawn_app().await;
    app.kill_processors();
    let body = "UPR,2026-01-01,1\nUPR,2026-01-02,2\nUPR,2026-01-03,3\n";
    let (s, b) = app.send(reqwest::Method::POST, "/v1/uploads?kind=prices-csv", body).await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/uploads/{id}");
    app.get_until(&path, Duration::from_secs(30), "the upload settling", |b| b["state"] == "settling").await;
    let counts = [(id.clone(), 3)].into_iter().collect();
    tributary_broker::uploads::report(&app.c.nats, "committed", counts).await;
    app.get_until(&path, Duration::from_secs(10), "the forged report counted", |b| b["committed"] == 3).await;
    // Not a wait but a watch: for a second, the upload must not be done (the old code was, at once).
    for _ in 0..10 {
        let (_, b) = app.get(&path).await;
        assert_eq!(b["state"], "settling", "done on a report, with nothing committed: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.start_processor();
    let done = app.get_until(&path, Duration::from_secs(60), "the upload done", |b| b["state"] == "done").await;
    assert!(done["errors"].as_array().unwrap().is_empty(), "{done}");
    let (_, series) = app.get("/v1/series/price/UPR").await;
    assert_eq!(series["points"].as_array().map(Vec::len), Some(3), "committed before done: {series}");
}

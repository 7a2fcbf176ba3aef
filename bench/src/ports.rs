//! `tributary-bench ports` (`tributary bench-ports`): streams a generated ports-shaped file of a given size through the ports
//! importer (a child process, so its peak RSS is its own) into a private nats-server, beside the raw
//! JetStream publish rate of messages of the same size in the same run.

use async_nats::jetstream::{self, stream};
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tributary::local;

/// What to measure.
#[derive(clap::Args, Debug, Clone)]
pub struct PortsBenchArgs {
    /// Size of the generated file, MiB.
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Print only the JSON report.
    #[arg(long)]
    pub json: bool,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct PortsReport {
    /// File size in bytes.
    pub bytes: u64,
    /// Ports in the file.
    pub entries: u64,
    /// Average member size in bytes.
    pub entry_bytes: u64,
    /// Importer: MB/s (10^6 bytes) read and published, acks awaited.
    pub import_mb_per_s: f64,
    /// Importer: ports/s.
    pub import_entries_per_s: f64,
    /// The importer process's peak RSS, MiB (from /usr/bin/time), when measurable.
    pub import_peak_rss_mib: Option<f64>,
    /// Raw JetStream publish rate of messages whose payload is the size of a member, msgs/s.
    pub raw_publish_per_s: f64,
    /// import_entries_per_s / raw_publish_per_s.
    pub ratio: f64,
    /// Bytes of the importer's header block per message (content type and idempotency key).
    pub header_bytes: u64,
    /// Raw JetStream publish rate of plain messages as large as the importer's on the wire: a payload of
    /// the member's size plus its header block's, msgs/s.
    pub raw_publish_same_bytes_per_s: f64,
    /// import_entries_per_s / raw_publish_same_bytes_per_s: the target's ratio (≥ 0.9).
    pub ratio_same_bytes: f64,
    /// Raw JetStream publish rate of the same messages as the importer's: the same size and the same
    /// headers (`Content-Type` and a unique `Nats-Msg-Id`, which JetStream tracks for its duplicate
    /// window), msgs/s.
    pub raw_publish_with_ids_per_s: f64,
    /// import_entries_per_s / raw_publish_with_ids_per_s.
    pub ratio_with_ids: f64,
}

/// One generated port member, padded like a real one (~330 bytes).
fn member(i: u64) -> String {
    format!(
        "  \"B{i:08}\": {{\"name\": \"Generated port {i}\", \"city\": \"City {c}\", \"country\": \"Country {c}\", \
         \"alias\": [], \"regions\": [], \"coordinates\": [{lon}, {lat}], \"province\": \"Province {c}\", \
         \"timezone\": \"Etc/UTC\", \"unlocs\": [\"B{i:08}\"], \"code\": \"{i}\"}}",
        c = i % 200,
        lon = (i % 360) as f64 - 179.5,
        lat = (i % 180) as f64 - 89.5
    )
}

fn generate(path: &Path, bytes: u64) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(b"{\n")?;
    let (mut written, mut i) = (2u64, 0u64);
    while written < bytes {
        let m = member(i);
        if i > 0 {
            out.write_all(b",\n")?;
            written += 2;
        }
        out.write_all(m.as_bytes())?;
        written += m.len() as u64;
        i += 1;
    }
    out.write_all(b"\n}\n")?;
    out.flush()?;
    Ok(i)
}

/// The importer's headers for member `i` of `run` (the importer's key is a byte offset: as many digits).
fn import_headers(run: &tributary_gatherer::Run, i: u64) -> async_nats::HeaderMap {
    let id = run.key(i);
    tributary_gatherer::import_headers(&id, tributary_broker::codec::JSON, None)
}

/// The size of a header block on the wire: `NATS/1.0\r\n`, `Name: value\r\n` per value, `\r\n`.
fn header_bytes(h: &async_nats::HeaderMap) -> u64 {
    let values: usize =
        h.iter().map(|(k, vs)| vs.iter().map(|v| k.to_string().len() + v.as_str().len() + 4).sum::<usize>()).sum();
    (10 + values + 2) as u64
}

/// Publishes `n` messages of `size` bytes with 4096 acks in flight; with `ids`, each carries the importer's
/// headers (a content type and a unique idempotency key). Returns msgs/s.
async fn raw_publish(js: &jetstream::Context, n: u64, size: usize, ids: bool) -> anyhow::Result<f64> {
    js.create_stream(stream::Config {
        name: "BENCH_PORTS_RAW".into(),
        subjects: vec!["benchportsraw.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let run = tributary_gatherer::Run::new("port");
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(4096);
    for i in 0..n {
        if acks.len() >= 4096 {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("not empty");
            ack.await?;
        }
        let subject = format!("benchportsraw.B{i:08}");
        let ack = if ids {
            js.publish_with_headers(subject, import_headers(&run, i), payload.clone()).await?
        } else {
            js.publish(subject, payload.clone()).await?
        };
        acks.push_back(ack);
    }
    for ack in acks {
        ack.await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    js.delete_stream("BENCH_PORTS_RAW").await?;
    Ok(rate)
}

/// Runs the measurement.
pub async fn run(args: PortsBenchArgs) -> anyhow::Result<()> {
    crate::tributary_exe()?;
    let dir = std::env::temp_dir().join(format!("tributary-bench-ports-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "ports file: {:.1} MB, {} ports, {} bytes each",
            report.bytes as f64 / 1e6,
            report.entries,
            report.entry_bytes
        );
        println!(
            "import:     {:.1} MB/s, {:.0} ports/s, peak RSS {}",
            report.import_mb_per_s,
            report.import_entries_per_s,
            report.import_peak_rss_mib.map_or("n/a (no /usr/bin/time)".into(), |m| format!("{m:.1} MiB"))
        );
        println!(
            "raw publish (plain, payload of the member's size): {:.0} msgs/s; import/raw = {:.2}",
            report.raw_publish_per_s, report.ratio
        );
        println!(
            "raw publish (plain, as many bytes with the {} header bytes): {:.0} msgs/s; import/raw = {:.2}",
            report.header_bytes, report.raw_publish_same_bytes_per_s, report.ratio_same_bytes
        );
        println!(
            "raw publish (same size and headers, unique Nats-Msg-Id): {:.0} msgs/s; import/raw = {:.2}",
            report.raw_publish_with_ids_per_s, report.ratio_with_ids
        );
    }
    Ok(())
}

async fn measure(args: &PortsBenchArgs, dir: &Path) -> anyhow::Result<PortsReport> {
    let file = dir.join("ports.json");
    let bytes_wanted = args.mib.max(1) << 20;
    eprintln!("generating {} MiB of ports…", args.mib);
    let entries = generate(&file, bytes_wanted)?;
    let bytes = std::fs::metadata(&file)?.len();
    let entry_bytes = bytes / entries.max(1);
    let bin = local::nats_server_bin().map_err(anyhow::Error::msg)?;
    let port = local::free_port();
    let mut nats = local::spawn_nats(&bin, port, &dir.join("nats"), &dir.join("nats.log"))?;
    let url = format!("nats://127.0.0.1:{port}");
    let outcome = async {
        let js =
            jetstream::new(tributary::app::connect_nats(&tributary::config::NatsConfig::with_url(url.clone())).await?);
        tributary_broker::streams::ensure(&js, &Default::default(), 1).await?;
        eprintln!("raw JetStream publish of {entries} messages of {entry_bytes} bytes…");
        let raw = raw_publish(&js, entries, entry_bytes as usize, false).await?;
        let header_bytes = header_bytes(&import_headers(&tributary_gatherer::Run::new("port"), entries / 2));
        let raw_same_bytes = raw_publish(&js, entries, (entry_bytes + header_bytes) as usize, false).await?;
        let raw_ids = raw_publish(&js, entries, entry_bytes as usize, true).await?;
        eprintln!("streaming the file through `tributary gatherer ports`…");
        let exe = crate::tributary_exe()?;
        let time = Path::new("/usr/bin/time");
        let mut cmd = if time.exists() {
            let mut c = std::process::Command::new(time);
            c.arg("-f").arg("peak-rss-kib %M").arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.args(["gatherer", "ports", "--quiet"]).arg(&file).env("NATS_URL", &url).env("RUST_LOG", "warn");
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        let secs = started.elapsed().as_secs_f64();
        let said = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "the import failed: {said}");
        let rss = said
            .lines()
            .find_map(|l| l.strip_prefix("peak-rss-kib "))
            .and_then(|k| k.trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0);
        let rate = entries as f64 / secs;
        Ok::<_, anyhow::Error>(PortsReport {
            bytes,
            entries,
            entry_bytes,
            import_mb_per_s: bytes as f64 / secs / 1e6,
            import_entries_per_s: rate,
            import_peak_rss_mib: rss,
            raw_publish_per_s: raw,
            ratio: rate / raw,
            header_bytes,
            raw_publish_same_bytes_per_s: raw_same_bytes,
            ratio_same_bytes: rate / raw_same_bytes,
            raw_publish_with_ids_per_s: raw_ids,
            ratio_with_ids: rate / raw_ids,
        })
    }
    .await;
    let _ = nats.kill();
    let _ = nats.wait();
    outcome
}

//! `tributary import FILE --kind K`: the importers of the upload route, from the command line.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use tributary::app;
use tributary::config::Config;
use tributary_gatherer::{Destination, ImportKind, ImportReport};

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// The file (`-` for stdin).
    file: PathBuf,
    /// What the file holds.
    #[arg(long, value_parser = |s: &str| s.parse::<ImportKind>())]
    kind: ImportKind,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `tributary import FILE --kind K`.
pub(crate) async fn run(config: Config, args: ImportArgs) -> anyhow::Result<()> {
    match args.kind {
        ImportKind::Ports => return ports(&config, &args.file, args.quiet).await,
        ImportKind::PricesCsv => return prices_csv(&config, &args.file, args.quiet).await,
        ImportKind::Ndjson | ImportKind::Numbers => {}
    }
    let (input, size) = open(&args.file).await?;
    // Bytes read and entries/s, as the other importers show.
    let bar = tributary_gatherer::byte_progress_bar(size, !args.quiet);
    let started = std::time::Instant::now();
    let show = |p: &tributary_gatherer::Progress| {
        bar.set_position(p.bytes);
        let rate = p.entries as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} lines, {rate:.0}/s, {} refused", p.entries, p.invalid));
    };
    if args.kind == ImportKind::Numbers {
        let r = tributary_gatherer::numbers::stats(input, &mut |p, _| show(p)).await;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string_pretty(&r.stats)?);
        for e in &r.read.errors {
            eprintln!("  {e}");
        }
        return r.read.stopped.map_or(Ok(()), |why| Err(anyhow::anyhow!(why)));
    }
    let js = app::jetstream(&config).await?;
    let to = Destination { js, upload: None, progress: &mut |p| show(p) };
    let r = tributary_gatherer::ndjson::import_with(input, to).await;
    bar.finish_and_clear();
    lines_imported(&r)
}

/// Imports `instrument,ts,price[,volume]` lines (`-`: standard input) with a progress bar, and reports
/// what it did.
pub(crate) async fn prices_csv(config: &Config, path: &Path, quiet: bool) -> anyhow::Result<()> {
    let js = app::jetstream(config).await?;
    let (input, size) = open(path).await?;
    lines_imported(&tributary_gatherer::prices::import_csv(js, input, size, !quiet).await)
}

/// Tells what a line import (NDJSON, CSV) did; an error if it refused a line, did not deliver an event,
/// or stopped before the input's end.
fn lines_imported(r: &ImportReport) -> anyhow::Result<()> {
    let (read, publish) = (&r.read, &r.publish);
    eprintln!(
        "read {} lines ({} bytes): {} published, {} duplicates, {} refused, {} not delivered",
        read.progress.entries,
        read.progress.bytes,
        publish.stored,
        publish.duplicates,
        read.progress.invalid,
        publish.failed.len()
    );
    for e in &read.errors {
        eprintln!("  {e}");
    }
    for (subject, reason) in publish.failed.iter().take(20) {
        eprintln!("  not delivered to {subject}: {reason}");
    }
    if let Some(why) = &read.stopped {
        eprintln!("{why}");
    }
    anyhow::ensure!(
        publish.failed.is_empty() && read.progress.invalid == 0 && read.stopped.is_none(),
        "import finished with errors"
    );
    Ok(())
}

/// Imports a ports file (`-`: standard input), streamed with a progress bar, and reports what it did.
pub(crate) async fn ports(config: &Config, file: &Path, quiet: bool) -> anyhow::Result<()> {
    let js = app::jetstream(config).await?;
    let started = std::time::Instant::now();
    let (input, size) = open(file).await?;
    let report = tributary_gatherer::ports::import(js, input, size, !quiet).await;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "read {} ports ({} bytes, {:.1} MB/s, {:.0} ports/s): {} published, {} duplicates, {} invalid (dead-lettered by the processor), {} skipped, {} not delivered; decoder buffer peak {} bytes",
        report.entries,
        report.bytes,
        report.bytes as f64 / secs / 1e6,
        report.entries as f64 / secs,
        report.publish.stored,
        report.publish.duplicates,
        report.invalid_count,
        report.skipped_count,
        report.publish.failed.len(),
        report.max_buffer
    );
    for (at, key, reason) in report.invalid.iter().chain(&report.skipped).take(20) {
        eprintln!("  {at}: {key}: {reason}");
    }
    if let Some(e) = &report.syntax_error {
        eprintln!("stopped: {e} (everything before it was published)");
    }
    if let Some(why) = &report.stopped {
        eprintln!("{why}");
    }
    anyhow::ensure!(
        report.syntax_error.is_none()
            && report.stopped.is_none()
            && report.publish.failed.is_empty()
            && report.skipped.is_empty(),
        "import finished with errors"
    );
    Ok(())
}

/// An import's input: the file at `path` with its size, or standard input (`-`, size unknown).
async fn open(path: &Path) -> anyhow::Result<(Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(tokio::io::stdin()), None));
    }
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(file), size))
}

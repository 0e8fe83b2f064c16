//! Actor messaging compared with the baselines it has to beat, in one run.
//!
//! Two endpoints in this one process over TCP loopback, 100-byte payloads. Each pattern
//! gets a throughput figure (the median of [`RUNS`] runs, each on a fresh connection)
//! and round-trip percentiles (one message at a time), printed as a markdown table
//! with the ratio to raw TCP.
//!
//! Run with `cargo bench -p btnode --bench actors`. The tokio runtime has one worker
//! thread per core unless `ACTORS_BENCH_THREADS` says otherwise; every measurement
//! runs as a task on those workers.

use std::{future::Future, time::Duration, time::Instant};

use anyhow::Context as _;
use tokio::runtime::Runtime;

mod baselines;
mod ours;

/// Bytes of payload in every message, excluding framing.
const PAYLOAD: usize = 100;

/// Throughput runs per pattern; the median is reported.
const RUNS: usize = 5;

/// Round trips sampled per pattern (after a tenth as many unrecorded warm-up rounds),
/// unless `ACTORS_BENCH_ROUNDS` says otherwise (more, to profile a round trip).
const ROUNDS: usize = 10_000;

const RAW_TCP_MESSAGES: u64 = 8_000_000;
const LIBP2P_STREAM_MESSAGES: u64 = 2_000_000;
const REQUEST_RESPONSE_REQUESTS: u64 = 30_000;
const OURS_MESSAGES: u64 = 2_000_000;

/// A bare stream between two of our nodes: the floor the actor runtime stands on.
const OVERLAY_STREAM: &str =
    "libp2p-stream on the node's stream connection (diverted from its listener)";

/// The pattern every ratio is taken against.
const RAW_TCP: &str = "raw TCP (tokio, length-prefixed)";

/// One line of the table.
#[derive(Debug)]
struct Row {
    pattern: String,
    /// Messages (or request/response pairs) per second.
    throughput: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
}

impl Row {
    /// A row from a throughput figure and round-trip samples (none if the pattern has
    /// no reply).
    fn new(pattern: &str, throughput: f64, mut round_trips: Vec<Duration>) -> Self {
        let (p50, p99) = if round_trips.is_empty() {
            (None, None)
        } else {
            (
                Some(baselines::percentile(&mut round_trips, 50.0)),
                Some(baselines::percentile(&mut round_trips, 99.0)),
            )
        };
        Self {
            pattern: pattern.to_owned(),
            throughput,
            p50,
            p99,
        }
    }
}

/// Runs `future` as a task on `runtime`'s worker threads, as every endpoint's tasks run.
fn run<T: Send + 'static>(
    runtime: &Runtime,
    future: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    runtime.block_on(async {
        tokio::spawn(future)
            .await
            .context("benchmark task panicked")?
    })
}

/// The median of [`RUNS`] runs of `measure`, after one unrecorded warm-up run of a
/// tenth of the size.
fn throughput<F, Fut>(runtime: &Runtime, size: u64, measure: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<f64>> + Send + 'static,
{
    run(runtime, measure(size / 10))?;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(run(runtime, measure(size))?);
    }
    runs.sort_by(f64::total_cmp);
    let runs_text: Vec<String> = runs.iter().map(|&rate| format_rate(rate)).collect();
    eprintln!("  msgs/s, sorted runs: {}", runs_text.join(" "));
    Ok(runs[runs.len() / 2])
}

fn format_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

fn format_micros(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "–".to_owned(),
        |d| format!("{:.1} µs", d.as_secs_f64() * 1e6),
    )
}

/// `ratio` to two significant digits (at least one decimal), as a multiplier.
fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(ratio) if ratio.is_finite() && ratio > 0.0 => {
            let decimals = ((-ratio.log10()).ceil().max(0.0) as usize + 1).min(9);
            format!("{ratio:.decimals$}×")
        }
        _ => "–".to_owned(),
    }
}

/// Prints `rows` as a markdown table; ratios are to the row named `reference`:
/// throughput as a fraction of it, p50 as a multiple of it.
fn print_table(rows: &[Row], reference: &str) {
    let reference = rows.iter().find(|row| row.pattern == reference);
    println!("| pattern | msgs/s | p50 | p99 | ratio to raw TCP (msgs/s, p50) |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let throughput_ratio = format_ratio(reference.map(|r| row.throughput / r.throughput));
        let p50_ratio = format_ratio(match (reference.and_then(|r| r.p50), row.p50) {
            (Some(r), Some(p50)) => Some(p50.as_secs_f64() / r.as_secs_f64()),
            _ => None,
        });
        println!(
            "| {} | {} | {} | {} | {throughput_ratio}, {p50_ratio} |",
            row.pattern,
            format_rate(row.throughput),
            format_micros(row.p50),
            format_micros(row.p99),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = match std::env::var("ACTORS_BENCH_THREADS") {
        Ok(threads) => threads
            .parse()
            .context("ACTORS_BENCH_THREADS is not a number")?,
        Err(_) => cores,
    };
    let rounds = match std::env::var("ACTORS_BENCH_ROUNDS") {
        Ok(rounds) => rounds
            .parse()
            .context("ACTORS_BENCH_ROUNDS is not a number")?,
        Err(_) => ROUNDS,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rows = Vec::new();

    // ACTORS_BENCH_ONLY=ours (for profiling) runs only the rows whose name contains it
    // (`ours: tell /` the remote tells and asks alone);
    // raw TCP always runs, as every ratio needs it.
    let only = std::env::var("ACTORS_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || name.contains(&only);

    eprintln!("raw TCP…");
    rows.push(Row::new(
        RAW_TCP,
        throughput(&runtime, RAW_TCP_MESSAGES, |n| {
            baselines::raw_tcp_throughput(n, PAYLOAD)
        })?,
        run(&runtime, baselines::raw_tcp_round_trips(rounds, PAYLOAD))?,
    ));

    if wanted("libp2p-stream") {
        eprintln!("libp2p-stream…");
        rows.push(Row::new(
            "libp2p-stream, one stream (TCP+Noise+Yamux)",
            throughput(&runtime, LIBP2P_STREAM_MESSAGES, |n| {
                baselines::libp2p_stream_throughput(n, PAYLOAD)
            })?,
            {
                eprintln!("libp2p-stream, round trips…");
                run(
                    &runtime,
                    baselines::libp2p_stream_round_trips(rounds, PAYLOAD),
                )?
            },
        ));
    }
    if wanted("libp2p-stream on the node") {
        eprintln!("libp2p-stream on the node's connection…");
        rows.push(Row::new(
            OVERLAY_STREAM,
            throughput(&runtime, LIBP2P_STREAM_MESSAGES, |n| {
                ours::overlay_stream_throughput(n, PAYLOAD)
            })?,
            {
                eprintln!("libp2p-stream on the node's connection, round trips…");
                run(&runtime, ours::overlay_stream_round_trips(rounds, PAYLOAD))?
            },
        ));
    }
    if wanted("request-response") {
        eprintln!("request-response…");
        rows.push(Row::new(
            &format!(
                "request-response, CBOR (window {})",
                baselines::REQUEST_WINDOW
            ),
            throughput(&runtime, REQUEST_RESPONSE_REQUESTS, |n| {
                baselines::request_response_throughput(n, PAYLOAD)
            })?,
            run(
                &runtime,
                baselines::request_response_round_trips(rounds, PAYLOAD),
            )?,
        ));
    }
    const OURS: &str = "ours: tell / ask (typed, checked both ends; TCP+Noise+Yamux)";
    if wanted(OURS) {
        eprintln!("ours…");
        let tells = throughput(&runtime, OURS_MESSAGES, |n| {
            ours::tell_throughput(n, PAYLOAD)
        })?;
        eprintln!("ours, round trips…");
        rows.push(Row::new(
            OURS,
            tells,
            run(&runtime, ours::ask_round_trips(rounds, PAYLOAD))?,
        ));
    }
    const OURS_LOCAL: &str = "ours: tell within one node (no network)";
    if wanted(OURS_LOCAL) {
        eprintln!("ours, one node…");
        rows.push(Row::new(
            OURS_LOCAL,
            throughput(&runtime, OURS_MESSAGES, |n| {
                ours::local_tell_throughput(n, PAYLOAD)
            })?,
            Vec::new(),
        ));
    }

    println!(
        "{PAYLOAD}-byte payloads, loopback, one process, {cores} cores, \
         {threads} runtime worker threads; msgs/s is the median of {RUNS} runs, p50/p99 over {rounds} round trips."
    );
    println!();
    print_table(&rows, RAW_TCP);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

//! `btsim`: the churn simulator's command line. `schedule` draws a scenario's schedule
//! and summarises it; `run` plays it against real overlay nodes, shows a progress bar, and writes a JSON
//! report, an SVG of plots and a summary table.
//! Either prints its seed and takes it back with `--seed`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use simulator::{Scenario, Schedule};

/// A thousand nodes in one process allocate and free small buffers from both cores at
/// once; glibc's allocator took a sixth of all samples, part of it waiting on its arena
/// locks. jemalloc (per-thread caches): 11 % less CPU for the same run, the same peak
/// memory (mimalloc: 13 % less CPU, 16 % more memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Blocktree's churn simulator.
#[derive(Debug, Parser)]
#[command(name = "btsim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw a scenario's schedule and print its seed and a summary as JSON.
    Schedule {
        /// The scenario (TOML). Default: the built-in default scenario.
        #[arg(long, value_name = "FILE")]
        scenario: Option<PathBuf>,
        /// The seed. Default: a random one (printed, to replay the run).
        #[arg(long)]
        seed: Option<u64>,
        /// Print every event too, one JSON line each.
        #[arg(long)]
        events: bool,
    },
    /// Play a scenario against real overlay nodes (memory transport) and report.
    Run {
        /// The scenario (TOML). Default: the built-in default scenario.
        #[arg(long, value_name = "FILE")]
        scenario: Option<PathBuf>,
        /// The seed. Default: a random one (printed, to replay the run).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the JSON report here.
        #[arg(long, value_name = "FILE", default_value = "btsim-report.json")]
        report: PathBuf,
        /// Write the plots (SVG) here.
        #[arg(long, value_name = "FILE", default_value = "btsim-report.svg")]
        plot: PathBuf,
    },
}

fn load(file: Option<&PathBuf>) -> Result<Scenario, String> {
    match file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            Scenario::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))
        }
        None => Ok(Scenario::default()),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btsim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let (file, seed, events) = match cli.command {
        Command::Schedule {
            scenario,
            seed,
            events,
        } => (scenario, seed, events),
        Command::Run {
            scenario,
            seed,
            report,
            plot,
        } => return play(scenario.as_ref(), seed, &report, &plot),
    };
    let scenario = load(file.as_ref())?;
    let seed = seed.unwrap_or_else(rand::random);
    eprintln!(
        "scenario {:?}, seed {seed} (replay with --seed {seed})",
        scenario.name
    );
    let schedule = Schedule::generate(&scenario, seed).map_err(|e| e.to_string())?;
    let out = serde_json::json!({
        "scenario": scenario.name,
        "seed": seed,
        "summary": schedule.summary(),
    });
    println!("{out}");
    if events {
        for event in &schedule.events {
            let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
            println!("{line}");
        }
    }
    Ok(())
}

fn play(
    file: Option<&PathBuf>,
    seed: Option<u64>,
    out: &PathBuf,
    plot: &PathBuf,
) -> Result<(), String> {
    let scenario = load(file)?;
    let seed = seed.unwrap_or_else(rand::random);
    eprintln!(
        "scenario {:?}: {} nodes, {} simulated s at {}x; seed {seed} (replay with --seed {seed})",
        scenario.name, scenario.nodes, scenario.duration_secs, scenario.time_scale
    );
    let schedule = Schedule::generate(&scenario, seed).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {percent:>3}% {msg} (eta {eta})",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    let mut shown = -1i64;
    let report = runtime.block_on(simulator::play(&scenario, &schedule, |done, live, lag| {
        bar.set_position((done * 1000.0) as u64);
        // Not a terminal (a log, CI): a line every 5 %.
        let step = (done * 20.0) as i64;
        if bar.is_hidden() && step != shown {
            shown = step;
            eprintln!(
                "{:3.0} % after {:.0} s, {live} nodes on line, {:.0} MiB, events {lag:.1} s late",
                done * 100.0,
                bar.elapsed().as_secs_f64(),
                simulator::play::rss_mib()
            );
        }
        bar.set_message(format!(
            "{live} nodes on line, {:.0} MiB, {lag:.1} s late",
            simulator::play::rss_mib()
        ));
    }));
    bar.finish_and_clear();
    let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out, json).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let svg = simulator::plot::svg(&report)?;
    std::fs::write(plot, svg).map_err(|e| format!("cannot write {}: {e}", plot.display()))?;
    print!("{}", table(&report));
    for (what, errors) in [
        ("resolutions", &report.resolve_errors),
        ("file operations", &report.file_errors),
    ] {
        if !errors.is_empty() {
            println!("\nwhy {what} failed:");
            for (why, count) in errors {
                println!("- {count}: {why}");
            }
        }
    }
    eprintln!(
        "report written to {}, plots to {}",
        out.display(),
        plot.display()
    );
    Ok(())
}

/// The summary table (Markdown), whole run and after the warm-up side by side.
fn table(report: &simulator::Report) -> String {
    let (a, w) = (&report.all, &report.after_warm_up);
    let mut t = String::new();
    let mut row = |name: &str, all: String, after: String| {
        t.push_str(&format!("| {name} | {all} | {after} |\n"));
    };
    row(
        "",
        "whole run".into(),
        format!("after the warm-up ({} s)", w.from_secs),
    );
    row("---", "---:".into(), "---:".into());
    row(
        "resolutions: right node / failed",
        format!("{} / {}", a.resolved, a.failed),
        format!("{} / {}", w.resolved, w.failed),
    );
    row(
        "lookup success rate",
        format!("{:.4}", a.success_rate),
        format!("{:.4}", w.success_rate),
    );
    row(
        "latency p50 / p99 (ms, real time)",
        format!("{:.1} / {:.1}", a.latency_p50_ms, a.latency_p99_ms),
        format!("{:.1} / {:.1}", w.latency_p50_ms, w.latency_p99_ms),
    );
    row(
        "hops p50 / p99",
        format!("{} / {}", a.hops_p50, a.hops_p99),
        format!("{} / {}", w.hops_p50, w.hops_p99),
    );
    row(
        "pub-sub: delivered / due (publications)",
        format!("{} / {} ({})", a.delivered, a.deliveries_due, a.published),
        format!("{} / {} ({})", w.delivered, w.deliveries_due, w.published),
    );
    row(
        "pub-sub delivery ratio",
        format!("{:.4}", a.delivery_ratio),
        format!("{:.4}", w.delivery_ratio),
    );
    if report.files_written > 0 || a.puts_ok + a.puts_failed > 0 {
        row(
            "files: puts acknowledged / failed",
            format!("{} / {}", a.puts_ok, a.puts_failed),
            format!("{} / {}", w.puts_ok, w.puts_failed),
        );
        row(
            "files: gets read back / failed",
            format!("{} / {}", a.gets_ok, a.gets_failed),
            format!("{} / {}", w.gets_ok, w.gets_failed),
        );
        row(
            "data availability",
            format!("{:.4}", a.availability),
            format!("{:.4}", w.availability),
        );
        row(
            "put p50 / get p50 / get p99 (ms, real time)",
            format!(
                "{:.0} / {:.0} / {:.0}",
                a.put_latency_p50_ms, a.get_latency_p50_ms, a.get_latency_p99_ms
            ),
            format!(
                "{:.0} / {:.0} / {:.0}",
                w.put_latency_p50_ms, w.get_latency_p50_ms, w.get_latency_p99_ms
            ),
        );
        row(
            "repair: copies / MiB sent / items taken over",
            format!(
                "{} / {:.1} / {}",
                a.repair_copies,
                a.repair_bytes as f64 / 1048576.0,
                a.repair_taken_over
            ),
            format!(
                "{} / {:.1} / {}",
                w.repair_copies,
                w.repair_bytes as f64 / 1048576.0,
                w.repair_taken_over
            ),
        );
        row(
            "slow replicas: reads hedged / version reads short of quorum",
            format!("{} / {}", a.reads_hedged, a.reads_short),
            format!("{} / {}", w.reads_hedged, w.reads_short),
        );
        row(
            "files acknowledged / lost (unreadable at the end)",
            format!("{} / {}", report.files_written, report.files_lost),
            String::new(),
        );
    }
    row(
        "resolutions of paths still registering (not counted)",
        report.not_yet_registered.to_string(),
        String::new(),
    );
    row(
        "Kademlia requests per resolution, p50",
        format!("{:.0}", report.requests_p50),
        String::new(),
    );
    row(
        "Kademlia requests sent: refresh / closest / get / put",
        kad_sent(&a.kad),
        kad_sent(&w.kad),
    );
    row(
        "record stores (PUT queries) / acknowledged by no peer / handed off",
        format!(
            "{} / {} / {}",
            a.kad.puts, a.kad.puts_unacknowledged, a.kad.handed_off
        ),
        format!(
            "{} / {} / {}",
            w.kad.puts, w.kad.puts_unacknowledged, w.kad.handed_off
        ),
    );
    row(
        "Kademlia requests answered: closest / get / put",
        kad_served(&a.kad),
        kad_served(&w.kad),
    );
    row(
        "CPU time (s) / per node on line (ms per second)",
        format!("{:.1} / {:.2}", a.cpu_secs, a.cpu_ms_per_node_sec),
        format!("{:.1} / {:.2}", w.cpu_secs, w.cpu_ms_per_node_sec),
    );
    row(
        "wall time (s) / events played late by at most (s)",
        format!("{:.1} / {:.1}", report.wall_secs, report.lag_max_secs),
        String::new(),
    );
    row(
        "peak RSS (MiB) / most nodes on line / MiB per node",
        format!(
            "{:.0} / {} / {:.1}",
            report.peak_rss_mib, report.peak_live, report.rss_per_node_mib
        ),
        String::new(),
    );
    t
}

fn kad_sent(k: &simulator::play::KadWork) -> String {
    format!(
        "{} / {} / {} / {}",
        k.sent_bootstrap, k.sent_closest, k.sent_get_record, k.sent_put_record
    )
}

fn kad_served(k: &simulator::play::KadWork) -> String {
    format!(
        "{} / {} / {}",
        k.served_closest, k.served_get_record, k.served_put_record
    )
}

//! `btsim`: the churn simulator's command line. `schedule` draws a scenario's schedule
//! and summarises it; `run` plays it against real overlay nodes and writes a JSON report.
//! Either prints its seed and takes it back with `--seed`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use simulator::{Scenario, Schedule};

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
        } => return play(scenario.as_ref(), seed, &report),
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

fn play(file: Option<&PathBuf>, seed: Option<u64>, out: &PathBuf) -> Result<(), String> {
    let scenario = load(file)?;
    let seed = seed.unwrap_or_else(rand::random);
    eprintln!(
        "scenario {:?}: {} nodes, {} simulated s at {}×; seed {seed} (replay with --seed {seed})",
        scenario.name, scenario.nodes, scenario.duration_secs, scenario.time_scale
    );
    let schedule = Schedule::generate(&scenario, seed).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let mut shown = -1i64;
    let report = runtime.block_on(simulator::play(&scenario, &schedule, |done| {
        let percent = (done * 100.0) as i64;
        if percent / 10 != shown / 10 {
            shown = percent;
            eprintln!("{percent:3} %");
        }
    }));
    let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(out, json).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("| | value |");
    println!("|---|---:|");
    println!(
        "| resolutions that named the right node | {} |",
        report.resolved
    );
    println!("| failed | {} |", report.failed);
    println!(
        "| of paths still registering (not counted) | {} |",
        report.not_yet_registered
    );
    println!("| success rate | {:.4} |", report.success_rate);
    println!(
        "| latency p50 / p99 (ms, real time) | {:.1} / {:.1} |",
        report.latency_p50_ms, report.latency_p99_ms
    );
    println!(
        "| Kademlia requests per resolution, p50 | {:.0} |",
        report.requests_p50
    );
    println!("| wall time (s) | {:.1} |", report.wall_secs);
    println!(
        "| peak RSS (MiB) / nodes on line at most / MiB per node | {:.0} / {} / {:.1} |",
        report.peak_rss_mib, report.peak_live, report.rss_per_node_mib
    );
    eprintln!("report written to {}", out.display());
    Ok(())
}

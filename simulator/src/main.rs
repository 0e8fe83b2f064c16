//! `btsim`: the churn simulator's command line. For now it draws a scenario's schedule
//! (the seed is printed and accepted back) and summarises it; playing schedules against
//! real nodes comes next.

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
    let Command::Schedule {
        scenario: file,
        seed,
        events,
    } = cli.command;
    let scenario = match &file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            Scenario::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => Scenario::default(),
    };
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

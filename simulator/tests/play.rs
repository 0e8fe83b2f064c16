//! The small scenario played against real overlay nodes: the report's invariants.

#![allow(clippy::unwrap_used)]

use simulator::{Scenario, Schedule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_scenario_resolves_what_is_registered_and_delivers_what_is_published() {
    let mut scenario = Scenario::from_toml(include_str!("../scenarios/small.toml")).unwrap();
    // Shorter than the file asks, to keep CI short: 5 simulated minutes at 10x, 30 s.
    scenario.duration_secs = 300;
    scenario.warm_up_secs = 60;
    scenario.time_scale = 10.0;
    let schedule = Schedule::generate(&scenario, 11).unwrap();
    let summary = schedule.summary();
    let mut last = (0.0, 0);
    let report = simulator::play(&scenario, &schedule, |done, live, lag| {
        assert!(done >= last.0, "progress goes forward");
        assert!(lag >= 0.0);
        last = (done, live);
    })
    .await;
    eprintln!("{report:#?}");
    assert_eq!(last.0, 1.0);
    assert_eq!(report.seed, 11);
    assert_eq!(report.windows.len(), 5);
    assert!(report.peak_live > 0 && report.peak_live <= 30);
    assert!(report.peak_rss_mib > 0.0);
    let all = &report.all;
    assert!(all.resolved > 100, "{} resolved", all.resolved);
    // Floors, not the goals: churn here is fast, nodes few, and a loaded machine slows
    // every node's timers.
    assert!(all.success_rate >= 0.8, "success rate {}", all.success_rate);
    assert_eq!(
        all.resolved + all.failed + report.not_yet_registered,
        summary.resolves,
        "every resolution of the schedule is accounted for"
    );
    // Hops: 30 nodes are within a couple of rounds of any key.
    assert!(all.hops_p50 <= 3.0, "hops p50 {}", all.hops_p50);
    // Every publication of the schedule was made by a node on line and counted.
    assert_eq!(all.published, summary.publishes);
    assert!(all.deliveries_due > 0);
    assert!(all.delivered <= all.deliveries_due);
    assert!(
        all.delivery_ratio >= 0.8,
        "delivery ratio {}",
        all.delivery_ratio
    );
    // The windows add up to the totals.
    let sum = |f: fn(&simulator::Window) -> u64| report.windows.iter().map(f).sum::<u64>();
    assert_eq!(sum(|w| w.resolved), all.resolved);
    assert_eq!(sum(|w| w.delivered), all.delivered);
    // CPU time: measured, shared out over the windows, and no more than the cores could
    // have given in the run's wall time.
    let cpu: f64 = report.windows.iter().map(|w| w.cpu_secs).sum();
    assert!(
        (cpu - all.cpu_secs).abs() < 1e-6,
        "{cpu} against {}",
        all.cpu_secs
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    assert!(
        all.cpu_secs > 0.0 && all.cpu_secs <= report.wall_secs * cores + 1.0,
        "{} CPU-seconds in {} s",
        all.cpu_secs,
        report.wall_secs
    );
    assert!(all.cpu_ms_per_node_sec > 0.0);
    // Files: every put and get of the schedule is accounted for; some were written and
    // read back (churn here is far faster than the default's, so no floor near 1).
    assert!(summary.puts > 0 && summary.gets > 0);
    let interrupted = sum(|w| w.files_interrupted);
    let not_yet = sum(|w| w.gets_not_yet_written);
    assert_eq!(
        all.puts_ok + all.puts_failed + all.gets_ok + all.gets_failed + not_yet + interrupted,
        summary.puts + summary.gets,
        "every put and get of the schedule is accounted for"
    );
    assert_eq!(report.files_written, all.puts_ok);
    assert!(all.puts_ok > 0 && all.gets_ok > 0, "{all:?}");
    assert!(report.files_lost <= report.files_written);
    assert!(all.repair_copies > 0 && all.repair_bytes > 0);
    // The plots are an SVG document with a panel per measure.
    let svg = simulator::plot::svg(&report).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for title in [
        "nodes on line",
        "lookup success rate",
        "hops",
        "pub-sub delivery ratio",
        "CPU per node on line",
        "data availability",
        "repair",
    ] {
        assert!(svg.contains(title), "{title} missing from the plots");
    }
}

/// A scenario whose nodes only join and then do nothing still runs for its whole
/// duration, and every window, even one without a single event, is measured: what a
/// quiet network costs is one of the things the simulator is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_scenario_lasts_its_duration_and_measures_every_window() {
    let scenario = Scenario::from_toml(
        r#"
        name = "quiet"
        nodes = 4
        duration_secs = 200
        time_scale = 20.0
        warm_up_secs = 10

        [churn]
        distribution = { kind = "exponential" }
        median_session_secs = 1.0e9
        median_offline_secs = 1800.0
        crash_fraction = 0.0

        [workload]
        resolves_per_sec = 0.0
        publishes_per_sec = 0.0

        [files]
        puts_per_sec = 0.0
        "#,
    )
    .unwrap();
    let schedule = Schedule::generate(&scenario, 5).unwrap();
    // Every event is in the first 10 simulated seconds: the rest of the run has none.
    assert!(schedule.events.iter().all(|e| e.at_ms < 10_000));
    let report = simulator::play(&scenario, &schedule, |_, _, _| {}).await;
    // 200 simulated seconds at 20x: 10 s of real time at least.
    assert!(report.wall_secs >= 10.0, "{} s", report.wall_secs);
    assert_eq!(report.windows.len(), 4);
    for w in &report.windows {
        assert_eq!(w.live, 4, "{w:?}");
    }
    // Nodes on line are integrated over each window's real time: 60 simulated seconds
    // at 20x are 3 s, the last window's 20 are 1 s. A loaded machine plays marks late,
    // which moves time between windows: a second of it is allowed. (CPU time is counted
    // in ticks of 10 ms, which four idle nodes may not fill in a window.)
    for (w, real_secs) in report.windows[1..].iter().zip([3.0, 3.0, 1.0]) {
        let expected = 4.0 * real_secs;
        assert!(
            (w.node_secs - expected).abs() <= 4.0,
            "{} node-seconds, about {expected} expected: {w:?}",
            w.node_secs
        );
        // Sampled at the window's start (the first window's before any node joined).
        assert!(w.connections_mean > 0.0, "{w:?}");
    }
    assert!(report.all.cpu_secs > 0.0);
}

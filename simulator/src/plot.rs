//! The report's plots: one SVG of panels over simulated time.

use plotters::prelude::*;

use crate::play::Report;

/// A line: its label, colour and points (simulated minute, value).
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// One panel: a title, a y range and its lines.
struct Panel {
    title: &'static str,
    y: (f64, f64),
    series: Vec<Series>,
}

/// Draws `report` as an SVG document: live nodes, lookup success rate, latency, hops,
/// pub-sub delivery ratio, connections per node and, when the run had a file workload,
/// data availability and repair traffic, each over simulated minutes.
pub fn svg(report: &Report) -> Result<String, String> {
    let minutes = |f: &dyn Fn(&crate::play::Window) -> Option<f64>| -> Vec<(f64, f64)> {
        report
            .windows
            .iter()
            .filter_map(|w| f(w).map(|v| (w.at_secs as f64 / 60.0, v)))
            .collect()
    };
    let rate = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let max = |points: &[(f64, f64)]| points.iter().map(|p| p.1).fold(1.0f64, f64::max);
    // Ratios are drawn from 0.9 up, or from below the lowest value when one is lower:
    // a bad window is never off the panel.
    let floor = |points: &[(f64, f64)]| {
        let lowest = points.iter().map(|p| p.1).fold(1.0f64, f64::min);
        if lowest < 0.9 {
            (lowest - 0.05).max(0.0)
        } else {
            0.9
        }
    };
    let live = minutes(&|w| Some(f64::from(w.live)));
    let success = minutes(&|w| rate(w.resolved, w.resolved + w.failed));
    let p50 = minutes(&|w| (w.resolved > 0).then_some(w.latency_p50_ms));
    let p99 = minutes(&|w| (w.resolved > 0).then_some(w.latency_p99_ms));
    let hops50 = minutes(&|w| (w.hop_samples > 0).then_some(w.hops_p50));
    let hops99 = minutes(&|w| (w.hop_samples > 0).then_some(w.hops_p99));
    let delivery = minutes(&|w| rate(w.delivered, w.deliveries_due));
    let connections = minutes(&|w| (w.live > 0).then_some(w.connections_mean));
    let routing = minutes(&|w| (w.live > 0).then_some(w.routing_table_mean));
    let cpu = minutes(&|w| (w.node_secs > 0.0).then(|| 1000.0 * w.cpu_secs / w.node_secs));
    let files = report.files_written > 0
        || report
            .windows
            .iter()
            .any(|w| w.puts_ok + w.puts_failed + w.gets_ok + w.gets_failed > 0);
    let available = minutes(&|w| rate(w.gets_ok, w.gets_ok + w.gets_failed));
    let repair_kib = minutes(&|w| Some(w.repair_bytes as f64 / 1024.0));
    let under = minutes(&|w| Some(w.under_replicated as f64));
    let mut panels = vec![
        Panel {
            title: "nodes on line",
            y: (0.0, max(&live) * 1.1),
            series: vec![("live", BLUE, live)],
        },
        Panel {
            title: "lookup success rate",
            y: (floor(&success), 1.001),
            series: vec![("resolved / asked", GREEN, success)],
        },
        Panel {
            title: "lookup latency, ms (real time)",
            y: (0.0, max(&p99) * 1.1),
            series: vec![("p50", BLUE, p50), ("p99", RED, p99)],
        },
        Panel {
            title: "hops",
            y: (0.0, max(&hops99) + 1.0),
            series: vec![("p50", BLUE, hops50), ("p99", RED, hops99)],
        },
        Panel {
            title: "pub-sub delivery ratio",
            y: (floor(&delivery), 1.001),
            series: vec![("delivered / due", GREEN, delivery)],
        },
        Panel {
            title: "per node on line",
            y: (0.0, max(&connections).max(max(&routing)) * 1.1),
            series: vec![
                ("connections", BLUE, connections),
                ("routing table", MAGENTA, routing),
            ],
        },
        Panel {
            title: "CPU per node on line, ms a second",
            y: (0.0, max(&cpu) * 1.1),
            series: vec![("whole process / nodes", RED, cpu)],
        },
    ];
    if files {
        panels.push(Panel {
            title: "data availability",
            y: (floor(&available), 1.001),
            series: vec![("gets read back / gets", GREEN, available)],
        });
        panels.push(Panel {
            title: "repair",
            y: (0.0, max(&repair_kib).max(max(&under)) * 1.1),
            series: vec![
                ("KiB sent", BLUE, repair_kib),
                ("items lacking copies", RED, under),
            ],
        });
    }
    let rows = panels.len().div_ceil(2);
    let end = (report.windows.len() as f64).max(1.0);
    let mut out = String::new();
    {
        let root =
            SVGBackend::with_string(&mut out, (1200, 30 + 360 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!(
            "btsim {}: {} nodes, seed {}, {}x",
            report.scenario, report.nodes, report.seed, report.time_scale
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        for (area, panel) in root.split_evenly((rows, 2)).iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..end, panel.y.0..panel.y.1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("simulated minutes")
                .draw()
                .map_err(|e| e.to_string())?;
            for (label, colour, points) in panel.series {
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

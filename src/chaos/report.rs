//! A chaos run's report: `summary.json` (the verdict, anomaly counts,
//! faults with their failover times, latency), `report.md` for a human, and
//! `timeline.svg`: acknowledged posts per second and post latency over time,
//! fault windows shaded.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::chaos::checker::{Anomaly, CheckReport, Stats};
use crate::chaos::history::{Event, Outcome};
use crate::chaos::nemesis::PlannedFault;
use crate::chaos::run::ChaosArgs;

#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    pub kind: String,
    pub target: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// From the fault to the first acknowledged post (started after it) in
    /// the slowest space; None when none was acknowledged before the next.
    pub failover_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub valid: bool,
    pub seed: u64,
    pub regions: usize,
    pub nodes_per_region: usize,
    pub secs: u64,
    pub nemesis: String,
    pub latency_ms: Vec<u64>,
    pub faults_planned: usize,
    pub anomalies: BTreeMap<Anomaly, u64>,
    pub liveness_failures: u64,
    pub examples: Vec<String>,
    pub stats: Stats,
    pub faults: Vec<FaultSummary>,
    /// Acknowledged posts: latency from the attempt's start to its ack.
    pub post_p50_ms: u64,
    pub post_p99_ms: u64,
    pub post_max_ms: u64,
    pub failover_max_ms: Option<u64>,
    pub last_heal_ms: u64,
}

pub fn summary(
    args: &ChaosArgs,
    seed: u64,
    plan: &[PlannedFault],
    events: &[Event],
    report: &CheckReport,
    last_heal_ms: u64,
) -> Summary {
    let spaces: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            Event::Space { space, .. } => Some(space.as_str()),
            _ => None,
        })
        .collect();
    let oks: Vec<(&str, u64, u64)> = events
        .iter()
        .filter_map(|event| match event {
            Event::Post { space, start_ms, end_ms, outcome: Outcome::Ok, .. } => {
                Some((space.as_str(), *start_ms, *end_ms))
            }
            _ => None,
        })
        .collect();
    let faults: Vec<FaultSummary> = events
        .iter()
        .filter_map(|event| match event {
            Event::Fault { kind, target, start_ms, end_ms } => {
                let per_space: Vec<Option<u64>> = spaces
                    .iter()
                    .map(|space| {
                        oks.iter()
                            .filter(|(s, start, _)| s == space && *start >= *start_ms)
                            .map(|(_, _, end)| end - start_ms)
                            .min()
                    })
                    .collect();
                let failover_ms = if per_space.iter().all(Option::is_some) {
                    per_space.iter().flatten().max().copied()
                } else {
                    None
                };
                Some(FaultSummary {
                    kind: kind.clone(),
                    target: target.clone(),
                    start_ms: *start_ms,
                    end_ms: *end_ms,
                    failover_ms,
                })
            }
            _ => None,
        })
        .collect();
    let mut latencies: Vec<u64> = oks.iter().map(|(_, start, end)| end - start).collect();
    latencies.sort_unstable();
    let quantile = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * q).round() as usize]
    };
    Summary {
        valid: report.valid,
        seed,
        regions: args.regions,
        nodes_per_region: args.nodes_per_region,
        secs: args.secs,
        nemesis: args.nemesis.clone(),
        latency_ms: args.latency_ms.clone(),
        faults_planned: plan.len(),
        anomalies: report.anomalies.clone(),
        liveness_failures: report.liveness_failures,
        examples: report.examples.clone(),
        stats: report.stats.clone(),
        failover_max_ms: faults.iter().filter_map(|fault| fault.failover_ms).max(),
        faults,
        post_p50_ms: quantile(0.5),
        post_p99_ms: quantile(0.99),
        post_max_ms: latencies.last().copied().unwrap_or(0),
        last_heal_ms,
    }
}

pub fn markdown(summary: &Summary) -> String {
    let mut text = String::new();
    let verdict = if summary.valid { "PASSED: no anomaly" } else { "FAILED" };
    let _ = writeln!(text, "# Chaos run: {verdict}\n");
    let _ = writeln!(
        text,
        "Seed {} · {} regions × {} nodes · {} s · nemesis `{}` · one-way latency {:?} ms\n",
        summary.seed, summary.regions, summary.nodes_per_region, summary.secs, summary.nemesis, summary.latency_ms
    );
    let _ = writeln!(
        text,
        "Replay: `spaceraft chaos --seed {} --secs {} --regions {} --nodes-per-region {} --nemesis {}`\n",
        summary.seed, summary.secs, summary.regions, summary.nodes_per_region, summary.nemesis
    );
    let _ = writeln!(text, "![timeline](timeline.svg)\n");
    let _ = writeln!(text, "## Anomalies\n\n| class | count |\n| --- | --- |");
    for (anomaly, count) in &summary.anomalies {
        let _ = writeln!(
            text,
            "| {} | {count} |",
            serde_json::to_value(anomaly).unwrap_or_default().as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(text, "| liveness failures | {} |\n", summary.liveness_failures);
    let stats = &summary.stats;
    let _ = writeln!(text, "## Operations\n");
    let _ = writeln!(
        text,
        "- post attempts: {} (ok {}, failed {}, unknown {}); distinct keys {}, committed {}",
        stats.post_attempts, stats.posts_ok, stats.posts_failed, stats.posts_unknown, stats.keys, stats.committed
    );
    let _ = writeln!(text, "- deliveries to subscribers: {}; History reads: {}", stats.deliveries, stats.reads);
    let _ = writeln!(
        text,
        "- acknowledged post latency: p50 {} ms, p99 {} ms, max {} ms",
        summary.post_p50_ms, summary.post_p99_ms, summary.post_max_ms
    );
    let _ = writeln!(text, "- faults injected: {}\n", stats.faults);
    let _ = writeln!(text, "## Faults\n\n| at | fault | target | lasted | failover (first ack in every space) |\n| --- | --- | --- | --- | --- |");
    for fault in &summary.faults {
        let failover = fault.failover_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            text,
            "| {:.1} s | {} | {} | {:.1} s | {failover} |",
            fault.start_ms as f64 / 1000.0,
            fault.kind,
            fault.target,
            (fault.end_ms - fault.start_ms) as f64 / 1000.0
        );
    }
    if !summary.examples.is_empty() {
        let _ = writeln!(text, "\n## Violations (first {})\n", summary.examples.len());
        for example in &summary.examples {
            let _ = writeln!(text, "- {example}");
        }
    }
    let _ = writeln!(
        text,
        "\nFiles: `history.jsonl` (every operation), `summary.json`, `timeline.svg`, `cluster/` (configs and logs)."
    );
    text
}

/// Throughput and latency per second over the run, fault windows shaded.
pub fn timeline_svg(events: &[Event], run_ms: u64) -> String {
    let seconds = (run_ms / 1000 + 1) as usize;
    let mut acked = vec![0u64; seconds];
    let mut worst = vec![0u64; seconds];
    for event in events {
        if let Event::Post { start_ms, end_ms, outcome: Outcome::Ok, .. } = event {
            let second = ((end_ms / 1000) as usize).min(seconds - 1);
            acked[second] += 1;
            worst[second] = worst[second].max(end_ms - start_ms);
        }
    }
    let (width, height, left, top, plot_height) = (1000.0, 320.0, 50.0, 20.0, 240.0);
    let plot_width = width - left - 60.0;
    let x = |ms: f64| left + plot_width * ms / (seconds as f64 * 1000.0);
    let acked_max = acked.iter().copied().max().unwrap_or(1).max(1) as f64;
    let worst_max = worst.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(svg, r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##);
    for event in events {
        if let Event::Fault { kind, target, start_ms, end_ms } = event {
            let (x0, x1) = (x(*start_ms as f64), x(*end_ms as f64));
            let _ = writeln!(
                svg,
                r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{plot_height}" fill="#f4b4b4" fill-opacity="0.45"><title>{kind} {target}</title></rect>"##,
                (x1 - x0).max(1.0)
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#a03030" transform="rotate(-90 {:.1} {:.1})">{kind} {target}</text>"##,
                x0 + 10.0,
                top + plot_height - 4.0,
                x0 + 10.0,
                top + plot_height - 4.0
            );
        }
    }
    let polyline = |values: &[u64], max: f64| -> String {
        values
            .iter()
            .enumerate()
            .map(|(second, value)| {
                format!(
                    "{:.1},{:.1}",
                    x(second as f64 * 1000.0 + 500.0),
                    top + plot_height - plot_height * *value as f64 / max
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#2060c0" stroke-width="1.5"/>"##,
        polyline(&acked, acked_max)
    );
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#d08000" stroke-width="1" stroke-dasharray="3,2"/>"##,
        polyline(&worst, worst_max)
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444"/>"##,
        top + plot_height,
        left + plot_width,
        top + plot_height
    );
    for second in (0..seconds).step_by(10) {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{second} s</text>"##,
            x(second as f64 * 1000.0),
            top + plot_height + 14.0
        );
    }
    let _ = writeln!(svg, r##"<text x="{left}" y="12" fill="#2060c0">acknowledged posts/s (max {acked_max})</text>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="12" fill="#d08000">slowest ack per second (max {worst_max} ms)</text>"##,
        left + 320.0
    );
    let _ = writeln!(svg, r##"<text x="{:.1}" y="12" fill="#a03030">faults shaded</text>"##, left + 640.0);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_is_an_svg_with_the_faults() {
        let events = vec![
            Event::Fault { kind: "kill-region".into(), target: "eu-west".into(), start_ms: 5_000, end_ms: 9_000 },
            Event::Post {
                process: "p".into(),
                space: "s".into(),
                key: "k".into(),
                body: "b".into(),
                start_ms: 1_000,
                end_ms: 1_020,
                outcome: Outcome::Ok,
                seq: Some(1),
                error: None,
            },
        ];
        let svg = timeline_svg(&events, 20_000);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("kill-region eu-west"));
    }
}

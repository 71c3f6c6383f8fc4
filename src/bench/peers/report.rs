//! `spaceraft bench peers-report`: the runs of `bench peers` (JSON lines)
//! as a Markdown table, and SVG plots: throughput against clients, latency
//! CDFs, and throughput against the number of space clusters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{PeersReport, System};

#[derive(Debug, Clone, clap::Args)]
pub struct PeersReportArgs {
    /// The JSON lines `bench peers --json` printed.
    #[arg(long)]
    pub results: PathBuf,
    /// Where the SVG plots go.
    #[arg(long)]
    pub plots: PathBuf,
    /// How the plots are linked from the Markdown (a path relative to the
    /// document).
    #[arg(long, default_value = "")]
    pub plots_link: String,
}

/// The runs of one load: (system, clients, size, spaces, label).
type Load = (u8, usize, usize, usize, String);

fn order(system: System) -> u8 {
    match system {
        System::Spaceraft => 0,
        System::Etcd => 1,
        System::Nats => 2,
    }
}

pub fn read(path: &Path) -> anyhow::Result<Vec<PeersReport>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| serde_json::from_str(line).with_context(|| format!("a bad line in {}: {line}", path.display())))
        .collect()
}

fn range(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (low, high) = (fmt(min), fmt(max));
    if low == high {
        low
    } else {
        format!("{low}–{high}")
    }
}

fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn per_sec(value: f64) -> String {
    let value = value.round() as u64;
    if value >= 1000 {
        format!("{},{:03}", value / 1000, value % 1000)
    } else {
        value.to_string()
    }
}

/// Groups the runs by load.
fn by_load(runs: &[PeersReport]) -> BTreeMap<Load, Vec<&PeersReport>> {
    let mut loads: BTreeMap<Load, Vec<&PeersReport>> = BTreeMap::new();
    for run in runs {
        let key = (order(run.system), run.clients, run.size_bytes, run.spaces, run.label.clone());
        loads.entry(key).or_default().push(run);
    }
    loads
}

/// The Markdown table: one row per load and system, ranges over rounds.
pub fn markdown(runs: &[PeersReport], plots_link: &str) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "| system | load | clients | body | writes/s | p50 | p99 | p99.9 | rounds |");
    let _ = writeln!(text, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((_, clients, size, spaces, label), rounds) in by_load(runs) {
        let system = rounds[0].system.name();
        let load = if label.is_empty() { format!("{spaces} space(s)") } else { label.clone() };
        let rate: Vec<f64> = rounds.iter().map(|r| r.writes_per_sec).collect();
        let p50: Vec<f64> = rounds.iter().map(|r| r.p50_us as f64).collect();
        let p99: Vec<f64> = rounds.iter().map(|r| r.p99_us as f64).collect();
        let p999: Vec<f64> = rounds.iter().map(|r| r.p999_us as f64).collect();
        let failed: u64 = rounds.iter().map(|r| r.writes_failed).sum();
        let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
        let _ = writeln!(
            text,
            "| {system} | {load} | {clients} | {size} B | {}{failed} | {} | {} | {} | {} |",
            range(&rate, per_sec),
            range(&p50, ms),
            range(&p99, ms),
            range(&p999, ms),
            rounds.len()
        );
    }
    if !plots_link.is_empty() {
        let _ = writeln!(text);
        for plot in ["peers-throughput.svg", "peers-latency-cdf.svg", "peers-clusters.svg"] {
            let _ = writeln!(text, "![{plot}]({plots_link}/{plot})");
        }
    }
    text
}

const COLORS: [(System, &str); 3] =
    [(System::Spaceraft, "#2060c0"), (System::Etcd, "#409040"), (System::Nats, "#c06020")];

fn color(system: System) -> &'static str {
    COLORS.iter().find(|(s, _)| *s == system).map(|(_, c)| *c).unwrap_or("#000000")
}

/// One line of a chart: its name, colour and (x, y) points.
type Series = (String, &'static str, Vec<(f64, f64)>);

/// A line chart: series of (x, y) points, x on a log scale when asked.
struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    series: Vec<Series>,
}

impl Chart {
    fn svg(&self) -> String {
        let (width, height, left, right, top, bottom) = (720.0, 400.0, 70.0, 170.0, 30.0, 50.0);
        let points: Vec<(f64, f64)> = self.series.iter().flat_map(|(_, _, p)| p.iter().copied()).collect();
        let fx = |x: f64| if self.log_x { x.max(1e-9).log10() } else { x };
        let x_min = points.iter().map(|p| fx(p.0)).fold(f64::INFINITY, f64::min);
        let x_max = points.iter().map(|p| fx(p.0)).fold(f64::NEG_INFINITY, f64::max);
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
        let (x_span, y_span) = ((x_max - x_min).max(1e-9), y_max.max(1e-9));
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let px = |x: f64| left + (fx(x) - x_min) / x_span * plot_w;
        let py = |y: f64| top + plot_h - y / y_span * plot_h;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(svg, r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##);
        let _ = writeln!(svg, r##"<text x="{left}" y="18" font-size="14">{}</text>"##, self.title);
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888888"/>"##
        );
        for tick in 0..=4 {
            let y = y_max / 4.0 * tick as f64;
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                py(y),
                py(y),
                left - 4.0,
                py(y) + 4.0,
                short(y)
            );
        }
        let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        if xs.len() > 12 && self.log_x {
            // Many points: ticks at 1, 2 and 5 of each decade in range.
            let (low, high) = (xs[0], xs[xs.len() - 1]);
            xs = (-3..7)
                .flat_map(|exp| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exp)))
                .filter(|x| *x >= low && *x <= high)
                .collect();
        }
        if xs.len() <= 12 {
            for x in xs {
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                    px(x),
                    top + plot_h + 16.0,
                    short(x)
                );
            }
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            left + plot_w / 2.0,
            height - 10.0,
            self.x_label
        );
        let _ = writeln!(
            svg,
            r##"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            self.y_label
        );
        for (i, (name, color, series)) in self.series.iter().enumerate() {
            let path: Vec<String> = series.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
            let _ = writeln!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"##,
                path.join(" ")
            );
            for (x, y) in series {
                let _ = writeln!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##, px(*x), py(*y));
            }
            let ly = top + 14.0 + 18.0 * i as f64;
            let lx = left + plot_w + 12.0;
            let _ = writeln!(
                svg,
                r##"<line x1="{lx}" x2="{:.1}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"##,
                lx + 18.0,
                lx + 22.0,
                ly + 4.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn short(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 1000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The plots, as (file name, SVG).
pub fn plots(runs: &[PeersReport]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let single_space = |r: &&PeersReport| r.spaces == 1 && r.label.is_empty();
    // Throughput against clients, 256 B bodies.
    let mut throughput = Chart {
        title: "writes/s against clients (256 B, one space)".into(),
        x_label: "clients (log scale)".into(),
        y_label: "writes/s".into(),
        log_x: true,
        series: Vec::new(),
    };
    for (system, color) in COLORS {
        let mut by_clients: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for run in runs.iter().filter(single_space).filter(|r| r.system == system && r.size_bytes == 256) {
            by_clients.entry(run.clients).or_default().push(run.writes_per_sec);
        }
        let points: Vec<(f64, f64)> =
            by_clients.into_iter().map(|(clients, rates)| (clients as f64, mean(rates.into_iter()))).collect();
        if !points.is_empty() {
            throughput.series.push((system.name().into(), color, points));
        }
    }
    out.push(("peers-throughput.svg".to_string(), throughput.svg()));
    // Latency CDFs at one client, 256 B: the first round of each system.
    let mut cdf = Chart {
        title: "write latency CDF, 1 client, 256 B".into(),
        x_label: "latency, ms (log scale)".into(),
        y_label: "fraction of writes".into(),
        log_x: true,
        series: Vec::new(),
    };
    for system in [System::Spaceraft, System::Etcd, System::Nats] {
        let Some(run) =
            runs.iter().filter(single_space).find(|r| r.system == system && r.clients == 1 && r.size_bytes == 256)
        else {
            continue;
        };
        let points = run.cdf.iter().map(|(q, us)| (*us as f64 / 1000.0, *q)).collect();
        cdf.series.push((system.name().into(), color(system), points));
    }
    out.push(("peers-latency-cdf.svg".to_string(), cdf.svg()));
    // Spaceraft: the same posts over one space cluster and over many.
    let mut clusters = Chart {
        title: "Spaceraft posts/s: 100 spaces over 1 or 100 space clusters".into(),
        x_label: "space clusters (log scale)".into(),
        y_label: "posts/s".into(),
        log_x: true,
        series: Vec::new(),
    };
    let mut by_clusters: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.system == System::Spaceraft && r.spaces > 1) {
        let count = run.label.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(1);
        by_clusters.entry(count).or_default().push(run.writes_per_sec);
    }
    let points: Vec<(f64, f64)> =
        by_clusters.into_iter().map(|(count, rates)| (count as f64, mean(rates.into_iter()))).collect();
    if !points.is_empty() {
        clusters.series.push(("spaceraft".into(), color(System::Spaceraft), points));
    }
    out.push(("peers-clusters.svg".to_string(), clusters.svg()));
    out
}

pub fn run(args: &PeersReportArgs) -> anyhow::Result<String> {
    let runs = read(&args.results)?;
    anyhow::ensure!(!runs.is_empty(), "no runs in {}", args.results.display());
    std::fs::create_dir_all(&args.plots)?;
    for (name, svg) in plots(&runs) {
        let path = args.plots.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(markdown(&runs, &args.plots_link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: System, clients: usize, rate: f64, label: &str, spaces: usize) -> PeersReport {
        PeersReport {
            system,
            label: label.into(),
            clients,
            size_bytes: 256,
            spaces,
            secs: 10.0,
            writes_ok: (rate * 10.0) as u64,
            writes_failed: 0,
            writes_per_sec: rate,
            p50_us: 900,
            p90_us: 1200,
            p99_us: 2500,
            p999_us: 8000,
            max_us: 12000,
            cdf: vec![(0.5, 900), (0.99, 2500), (1.0, 12000)],
        }
    }

    #[test]
    fn rounds_of_a_load_are_one_row_with_ranges() {
        let runs = vec![
            run(System::Spaceraft, 64, 20_000.0, "", 1),
            run(System::Spaceraft, 64, 22_500.0, "", 1),
            run(System::Nats, 64, 24_000.0, "", 1),
            run(System::Spaceraft, 64, 9_000.0, "100 clusters", 100),
        ];
        let table = markdown(&runs, "plots");
        assert!(
            table.contains("| spaceraft | 1 space(s) | 64 | 256 B | 20,000–22,500 | 0.90 ms | 2.50 ms | 8.00 ms | 2 |"),
            "{table}"
        );
        assert!(table.contains("| nats | 1 space(s) | 64 | 256 B | 24,000 |"), "{table}");
        assert!(table.contains("| spaceraft | 100 clusters | 64 |"), "{table}");
        assert!(table.contains("![peers-throughput.svg](plots/peers-throughput.svg)"));
        let plots = plots(&runs);
        assert_eq!(plots.len(), 3);
        for (_, svg) in plots {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        }
    }
}

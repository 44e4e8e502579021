//! Optimizer trajectories on the Rosenbrock function `f(x, y) = (1 - x)^2 + 100 (y - x^2)^2`,
//! drawn over its contour plot into a PNG.
//!
//! Every optimizer starts from the classic point (-1.5, 2) and runs on the GPU: the point is one
//! 2-element tensor in its own `ParamArena`. Each step reads the point back
//! (`arena.read_params`), computes the analytic gradient on the host, uploads it
//! (`arena.write_grads`) and runs `opt.step(&arena)`. A host round trip per step is fine for a
//! 2-parameter toy; a real model computes its gradients on the GPU and never reads them back.
//! A `CpuOptimizer` with the same configuration runs side by side from the same start, and the
//! example fails unless the GPU and CPU end points agree to 1e-4 (relative).
//!
//! Each optimizer is a preset of `OptimizerConfig::presets()`: one per family, plus SGD's
//! momentum and Nesterov variants (AdamW, AMSGrad and RMSprop's momentum and centered presets
//! are left out so that the picture stays readable), each with a hand-picked learning rate
//! (see `RUNS`). The table printed at the end lists them with the end points on the GPU and
//! the CPU, f there and the first step with f < 1e-3.
//!
//! The picture: on the left every step of every run over log-spaced contours of f, each run
//! drawn over the ones that got further (so the valley reads as a race); on the right a
//! close-up of the first steps, f at each step and the length of each step (log scales).
//!
//! Run: `cargo run --release --example rosenbrock` (headless; lavapipe works, about a second),
//! which writes `docs/rosenbrock.png`; `-- --steps N` (default 1000: Adam reaches the minimum,
//! momentum nearly), `-- --out PATH`, and `-- --quick` (40 steps, the picture in a temporary
//! directory) for CI. The text needs a TrueType font (DejaVu Sans or another common one, or
//! `OPTBENCH_FONT=/path/to/font.ttf`, as `optbench --plot`).
//!
//! LARS and LAMB take steps of a fixed length (lr times the trust ratio times |p|, whatever the
//! gradient's size), which bounce across the valley and around the minimum without settling:
//! their paths are chaotic there, and the last-bit differences between the GPU's f32 norms and
//! the CPU reference's f64 norms grow. At the default 1000 steps every end point agrees to
//! better than 1e-6 (the elementwise optimizers bit for bit on lavapipe); past about 2000
//! steps LARS and LAMB no longer agree to 1e-4 and the check fails for them.

// The font loader optbench's --plot uses.
#[path = "../optbench/src/font.rs"]
mod font;

use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use plotters::coord::ReverseCoordTranslate;
use plotters::prelude::*;
use wgpu_optim::{CpuOptimizer, GpuContext, Optimizer, OptimizerConfig, ParamArena, TensorSpec};

/// Where every trajectory starts.
const START: [f32; 2] = [-1.5, 2.0];
/// The picture's size in pixels.
const W: u32 = 900;
const H: u32 = 700;
/// Steps in the close-up of the start.
const EARLY_STEPS: usize = 25;
/// Contour levels per decade of f (log-spaced).
const LEVELS_PER_DECADE: f64 = 2.0;

/// The optimizers drawn: a preset name from `OptimizerConfig::presets()` and the lr used. The
/// close-up's notes are placed for these.
const RUNS: &[(&str, f64)] = &[
    // One lr for the SGD family, so that the differences are momentum's. Plain SGD is
    // unstable above about 9e-4 at the start (the curvature across the valley is ~2100).
    ("sgd", 5e-4),
    ("sgd-momentum", 5e-4),
    ("sgd-nesterov", 5e-4),
    // Adam's first step is exactly lr in each coordinate; 0.1 reaches the minimum in ~640 steps.
    ("adam", 0.1),
    // RMSprop's first step is 10 lr per coordinate (alpha = 0.99) and Adagrad's is lr: these
    // two take the same first steps, then RMSprop forgets the large early gradients and
    // Adagrad does not.
    ("rmsprop", 5e-3),
    ("adagrad", 5e-2),
    // Steps of fixed length whatever the gradient: LARS lr * 1e-3 * |p| before momentum
    // (trust coefficient 1e-3), LAMB lr * |p|; both about 0.025 at the start, and they shrink
    // with |p| as the path passes the origin.
    ("lars", 1.0),
    ("lamb", 1e-2),
];

#[derive(Parser)]
#[command(about = "Optimizer trajectories on the Rosenbrock function, drawn into a PNG")]
struct Args {
    /// Steps per optimizer [default: 1000, or 40 with --quick]
    #[arg(long)]
    steps: Option<usize>,
    /// Output PNG [default: docs/rosenbrock.png, or a temporary directory with --quick]
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few steps, the picture in a temporary directory (a smoke run for CI)
    #[arg(long)]
    quick: bool,
}

/// f(x, y), in f64.
fn rosenbrock(x: f64, y: f64) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

/// The analytic gradient at an f32 point, computed in f64 and rounded once.
fn gradient(p: &[f32]) -> [f32; 2] {
    let (x, y) = (p[0] as f64, p[1] as f64);
    let dx = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x);
    let dy = 200.0 * (y - x * x);
    [dx as f32, dy as f32]
}

/// One optimizer's run.
struct Run {
    name: &'static str,
    lr: f64,
    /// The point before each step and after the last one (steps + 1 points).
    path: Vec<[f32; 2]>,
    /// The CPU reference's end point.
    cpu_end: [f32; 2],
    /// First step after which f < 1e-3, if any.
    converged_at: Option<usize>,
}

fn run_one(ctx: &GpuContext, name: &'static str, lr: f64, steps: usize) -> Result<Run> {
    let config = OptimizerConfig::preset(name)
        .with_context(|| format!("no preset {name:?}"))?
        .with_lr(lr);
    let specs = [TensorSpec::new("xy", 2)];
    let arena = ParamArena::new(ctx, &specs)?;
    arena.write_params("xy", &START)?;
    let mut opt = Optimizer::new(ctx, &arena, config.clone())?;
    let mut cpu = CpuOptimizer::new(config, &specs)?;
    let mut cpu_p = vec![START.to_vec()];

    let mut path = Vec::with_capacity(steps + 1);
    let mut converged_at = None;
    for step in 0..=steps {
        let p = arena.read_params("xy")?;
        ensure!(
            p.iter().all(|v| v.is_finite()),
            "{name} lr={lr}: diverged at step {step}"
        );
        path.push([p[0], p[1]]);
        if converged_at.is_none() && rosenbrock(p[0] as f64, p[1] as f64) < 1e-3 {
            converged_at = Some(step);
        }
        if step == steps {
            break;
        }
        arena.write_grads("xy", &gradient(&p))?;
        opt.step(&arena)?;
        let g = gradient(&cpu_p[0]);
        cpu.step(&mut cpu_p, &[g])?;
    }
    Ok(Run {
        name,
        lr,
        path,
        cpu_end: [cpu_p[0][0], cpu_p[0][1]],
        converged_at,
    })
}

/// matplotlib's tab10.
const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The contour band of f (log-spaced levels).
fn band(f: f64) -> i32 {
    (f.max(1e-12).log10() * LEVELS_PER_DECADE).floor() as i32
}

/// Fill colour of a band: pale, darker towards the valley, so the trajectories stand out.
fn band_color(b: i32) -> RGBColor {
    // Bands from f < 1e-2 (darkest) to f > 1e3 (white).
    let lo = -2.0 * LEVELS_PER_DECADE;
    let hi = 3.5 * LEVELS_PER_DECADE;
    let t = ((b as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
    let mix = |dark: f64| (dark + (255.0 - dark) * t).round() as u8;
    RGBColor(mix(196.0), mix(210.0), mix(232.0))
}

/// A map of the plane: every run's first `steps` steps over the contour plot.
struct Map {
    title: String,
    /// The x range; the y range has the same scale, centred on `y_centre`.
    x: (f64, f64),
    y_centre: f64,
    steps: usize,
    legend: bool,
    /// Presets left out of this map.
    hide: &'static [&'static str],
    /// Notes: the preset whose colour they take, the text, and where it starts.
    notes: &'static [(&'static str, &'static str, (f64, f64))],
}

/// Draws the overview, the close-up of the start, f per step and step lengths into an RGB
/// buffer.
fn draw(runs: &[Run], steps: usize, buf: &mut [u8]) -> Result<()> {
    let root = BitMapBackend::with_buffer(buf, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(
            &format!(
                "Rosenbrock f(x, y) = (1 - x)² + 100 (y - x²)², {steps} steps from ({}, {})",
                START[0], START[1]
            ),
            ("sans-serif", 20),
        )
        .map_err(plot_err)?;
    let (left, right) = root.split_horizontally(530);
    let (top, rest) = right.split_vertically(290);
    let (middle, bottom) = rest.split_vertically(190);

    // Drawn from the run that got furthest (lowest f) to the one that got least far, so each
    // run's path shows beyond the end of the runs drawn over it.
    let f_end = |r: &Run| {
        let p = r.path[r.path.len() - 1];
        rosenbrock(p[0] as f64, p[1] as f64)
    };
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| f_end(&runs[a]).total_cmp(&f_end(&runs[b])));

    draw_map(
        &left,
        runs,
        &order,
        &Map {
            title: "log-spaced contours of f; dots: steps; circles: where runs end".into(),
            x: (-1.75, 1.45),
            y_centre: 0.8,
            steps,
            legend: true,
            hide: &[],
            notes: &[],
        },
    )?;
    let early = steps.min(EARLY_STEPS);
    draw_map(
        &top,
        runs,
        &order,
        &Map {
            title: format!("close-up: the first {early} steps (without LARS, LAMB)"),
            x: (-1.63, -1.17),
            y_centre: 2.0,
            steps: early,
            legend: false,
            hide: &["lars", "lamb"],
            notes: &[
                ("sgd", "sgd: along −∇f", (-1.615, 1.985)),
                ("sgd-momentum", "momentum overshoots", (-1.625, 1.91)),
                ("sgd-momentum", "across the valley", (-1.625, 1.893)),
                ("sgd-nesterov", "nesterov: damped", (-1.36, 1.9)),
                ("adam", "adam: ±lr in x and y", (-1.345, 2.1)),
                ("adagrad", "adagrad = rmsprop", (-1.615, 2.07)),
                ("adagrad", "at first", (-1.615, 2.053)),
            ],
        },
    )?;
    draw_per_step(&middle, runs, &order, "f(x, y) at each step", |r| {
        r.path
            .iter()
            .map(|p| rosenbrock(p[0] as f64, p[1] as f64))
            .collect()
    })?;
    draw_per_step(&bottom, runs, &order, "length of each step", |r| {
        r.path
            .windows(2)
            .map(|w| ((w[1][0] - w[0][0]) as f64).hypot((w[1][1] - w[0][1]) as f64))
            .collect()
    })?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plot: {e}")
}

fn color_of(k: usize) -> RGBColor {
    let (r, g, b) = TAB10[k % TAB10.len()];
    RGBColor(r, g, b)
}

/// The smallest value the per-step charts show.
const FLOOR: f64 = 1e-7;

/// One value per step of every run (f, or the step's length), on a log scale.
fn draw_per_step<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    order: &[usize],
    title: &str,
    values: impl Fn(&Run) -> Vec<f64>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = plot_err::<DB::ErrorType>;
    let series: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| values(r).into_iter().map(|v| v.max(FLOOR)).collect())
        .collect();
    let (lo, hi) = series
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let steps = runs[0].path.len() - 1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(40)
        .build_cartesian_2d(0..steps, (lo / 2.0..hi * 2.0).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .label_style(("sans-serif", 12))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.1))
        .draw()
        .map_err(err)?;
    for &k in order {
        chart
            .draw_series(LineSeries::new(
                series[k].iter().enumerate().map(|(s, &v)| (s, v)),
                color_of(k).stroke_width(2),
            ))
            .map_err(err)?;
    }
    Ok(())
}

fn draw_map<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    order: &[usize],
    map: &Map,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = plot_err::<DB::ErrorType>;
    let area = area.titled(&map.title, ("sans-serif", 15)).map_err(err)?;
    let build = |y: (f64, f64)| {
        ChartBuilder::on(&area)
            .margin(8)
            .margin_top(0)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(map.x.0..map.x.1, y.0..y.1)
    };
    // The same scale on both axes: the y range follows from the plotting area's shape.
    let (px, py) = build((0.0, 1.0))
        .map_err(err)?
        .plotting_area()
        .get_pixel_range();
    let half = 0.5 * (map.x.1 - map.x.0) * py.len() as f64 / px.len() as f64;
    let (x, y) = (map.x, (map.y_centre - half, map.y_centre + half));
    let mut chart = build(y).map_err(err)?;

    // Filled contour bands, with a darker pixel where the band changes (the contour lines).
    let plot = chart.plotting_area().strip_coord_spec();
    let (px_range, py_range) = chart.plotting_area().get_pixel_range();
    let (pw, ph) = (px_range.len(), py_range.len());
    let spec = chart.as_coord_spec().clone();
    let mut bands = vec![0i32; pw * ph];
    for (j, py) in py_range.clone().enumerate() {
        for (i, px) in px_range.clone().enumerate() {
            let (x, y) = spec.reverse_translate((px, py)).unwrap_or((0.0, 0.0));
            bands[j * pw + i] = band(rosenbrock(x, y));
        }
    }
    for j in 0..ph {
        for i in 0..pw {
            let b = bands[j * pw + i];
            let edge = (i + 1 < pw && bands[j * pw + i + 1] != b)
                || (j + 1 < ph && bands[(j + 1) * pw + i] != b);
            let c = band_color(b);
            let c = if edge {
                RGBColor(c.0 - 60, c.1 - 55, c.2 - 45)
            } else {
                c
            };
            plot.draw_pixel((i as i32, j as i32), &c).map_err(err)?;
        }
    }
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(6)
        .y_labels(6)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;

    if map.legend {
        // Legend entries in table order, whatever the drawing order.
        for (k, run) in runs.iter().enumerate() {
            let style = color_of(k).stroke_width(2);
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(err)?
                .label(format!("{} lr={}", run.name, fmt_lr(run.lr)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    let in_view = |&(px, py): &(f64, f64)| px >= x.0 && px <= x.1 && py >= y.0 && py <= y.1;
    let point = |p: &[f32; 2]| (p[0] as f64, p[1] as f64);
    let order: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&k| !map.hide.contains(&runs[k].name))
        .collect();
    for &k in &order {
        let color = color_of(k);
        let pts: Vec<(f64, f64)> = runs[k].path[..=map.steps].iter().map(point).collect();
        let style = color.stroke_width(2);
        chart
            .draw_series(
                pts.windows(2)
                    .filter_map(|w| clip(w[0], w[1], x, y))
                    .map(|(a, b)| PathElement::new(vec![a, b], style)),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| in_view(p))
                    .map(|&p| Circle::new(p, 2, color.filled())),
            )
            .map_err(err)?;
    }

    // Start and minimum, then where each run ends (over the minimum: a run that got there
    // covers it).
    let start = point(&START);
    let text = ("sans-serif", 14).into_font();
    if in_view(&start) {
        chart
            .draw_series([EmptyElement::at(start)
                + Circle::new((0, 0), 6, BLACK.filled())
                + Text::new("start", (-14, -24), text.clone())])
            .map_err(err)?;
    }
    if in_view(&(1.0, 1.0)) {
        chart
            .draw_series([EmptyElement::at((1.0, 1.0))
                + Cross::new((0, 0), 7, BLACK.stroke_width(3))
                + Text::new("minimum (1, 1)", (-110, -8), text)])
            .map_err(err)?;
    }
    if map.steps == runs[0].path.len() - 1 {
        for &k in &order {
            let end = point(&runs[k].path[map.steps]);
            if in_view(&end) {
                chart
                    .draw_series([
                        Circle::new(end, 5, color_of(k).filled()),
                        Circle::new(end, 5, BLACK.stroke_width(1)),
                    ])
                    .map_err(err)?;
            }
        }
    }

    for &(name, note, at) in map.notes {
        let k = runs.iter().position(|r| r.name == name).unwrap_or(0);
        let style = ("sans-serif", 13).into_font().color(&color_of(k));
        chart
            .draw_series([Text::new(note, at, style)])
            .map_err(err)?;
    }

    if map.legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The part of segment a-b inside the rectangle `x` by `y` (Liang-Barsky), if any.
fn clip(
    a: (f64, f64),
    b: (f64, f64),
    x: (f64, f64),
    y: (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0f64, 1f64);
    for (p, q) in [
        (-dx, a.0 - x.0),
        (dx, x.1 - a.0),
        (-dy, a.1 - y.0),
        (dy, y.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            t0 = t0.max(q / p);
        } else {
            t1 = t1.min(q / p);
        }
    }
    let at = |t: f64| (a.0 + t * dx, a.1 + t * dy);
    (t0 <= t1).then(|| (at(t0), at(t1)))
}

/// An lr as written in the table and legend (5e-4, 0.05, 1).
fn fmt_lr(lr: f64) -> String {
    if lr < 1e-2 {
        format!("{lr:e}")
    } else {
        format!("{lr}")
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let steps = args.steps.unwrap_or(if args.quick { 40 } else { 1000 });
    ensure!(steps >= 1, "--steps must be at least 1");
    let out = match args.out {
        Some(p) => p,
        None if args.quick => {
            let dir = std::env::temp_dir().join("wgpu-optim-rosenbrock");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("rosenbrock.png")
        }
        None => PathBuf::from("docs/rosenbrock.png"),
    };
    font::register_font()?;

    let ctx = GpuContext::new().context("no GPU adapter (see README: scripts/setup-vulkan.sh)")?;
    println!("adapter: {}", ctx.adapter_info().name);

    let mut runs = Vec::new();
    for &(name, lr) in RUNS {
        runs.push(run_one(&ctx, name, lr, steps)?);
    }

    let mut buf = vec![0u8; (W * H * 3) as usize];
    draw(&runs, steps, &mut buf)?;
    let png = encode_png(W, H, &buf)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &png).with_context(|| format!("writing {}", out.display()))?;

    // The table: each run's lr, where it ended on the GPU and on the CPU, f there, and the
    // first step with f < 1e-3.
    let point = |p: [f32; 2]| format!("({:>8.5}, {:>8.5})", p[0], p[1]);
    println!();
    println!(
        "{:<13} {:>6} {:>5}  {:<20}  {:<20}  {:>8}  {:>8}  {:>11}",
        "optimizer",
        "lr",
        "steps",
        "end (x, y), GPU",
        "end (x, y), CPU",
        "rel diff",
        "f(end)",
        "f < 1e-3 at"
    );
    let mut disagree = Vec::new();
    for run in &runs {
        let end = run.path[steps];
        let rel = relative_difference(end, run.cpu_end);
        if rel.is_nan() || rel > 1e-4 {
            disagree.push(format!("{} ({rel:.1e})", run.name));
        }
        let rel = if rel == 0.0 {
            "0".to_string()
        } else {
            format!("{rel:.1e}")
        };
        let f_end = rosenbrock(end[0] as f64, end[1] as f64);
        let hit = run.converged_at.map_or("-".into(), |s| format!("step {s}"));
        println!(
            "{:<13} {:>6} {:>5}  {}  {}  {rel:>8}  {f_end:>8.2e}  {hit:>11}",
            run.name,
            fmt_lr(run.lr),
            steps,
            point(end),
            point(run.cpu_end),
        );
    }
    println!("wrote {} ({} KB)", out.display(), png.len().div_ceil(1024));
    if !disagree.is_empty() {
        bail!(
            "GPU and CPU end points differ by more than 1e-4 (relative): {}. (LARS and LAMB \
             paths are chaotic near the minimum, so past about 2000 steps rounding differences \
             between the GPU's and the CPU's norms grow; see the example's docs.)",
            disagree.join(", ")
        );
    }
    println!("GPU and CPU end points agree to 1e-4 (relative)");
    Ok(())
}

/// The largest coordinate difference of two points over the larger coordinate magnitude.
fn relative_difference(a: [f32; 2], b: [f32; 2]) -> f32 {
    let scale = a.iter().chain(&b).fold(0f32, |m, v| m.max(v.abs()));
    let diff = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// An 8-bit RGB PNG of `rgb` (`w * h * 3` bytes, rows top to bottom), with the `png` crate
/// (plotters' bitmap backend only fills a buffer here; its file output needs `image`).
fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    enc.write_header()?.write_image_data(rgb)?;
    Ok(out)
}

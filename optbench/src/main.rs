//! `optbench`: adapter information, a check of every optimizer variant on the GPU against the
//! CPU reference, and a throughput benchmark against a streaming-copy roofline.
//!
//! ```text
//! optbench                 # info, verify, quick bench (what `cargo run --release` runs)
//! optbench info [--json]
//! optbench verify [--optimizers adam,sgd] [--json]
//! optbench bench [--sizes 1M,4M,16M] [--tensors 1,1000,10000] [--optimizers adam,sgd-momentum]
//!                [--iters 10] [--warmup 3] [--quick] [--json] [--plot bench.png|bench.svg]
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use wgpu_optim::bench::{
    self, gb_per_s, host_memcpy, CopyConfig, CopyKernel, StepTimer, Summary, TimerChoice,
    TimerKind, COPY_BYTES_PER_ELEMENT,
};
use wgpu_optim::norm::{cpu_clip_grad_norm, cpu_norms};
use wgpu_optim::{
    AdagradConfig, AdamConfig, ContextOptions, DynOptimizer, GpuContext, GradClipper, GroupHyper,
    LambConfig, LarsConfig, NormReducer, NormType, OptimizerConfig, ParamArena, RmspropConfig,
    SgdConfig, TensorSpec,
};

/// PyTorch's fp32 `assert_close` tolerance: `|got - want| <= ATOL + RTOL * |want|`.
const ATOL: f64 = 1e-5;
/// See [`ATOL`].
const RTOL: f64 = 1.3e-6;

#[derive(Parser, Debug)]
#[command(
    name = "optbench",
    version,
    about = "wgpu-optim: adapter info, GPU-vs-CPU verification and optimizer-step benchmarks",
    long_about = "wgpu-optim: adapter info, GPU-vs-CPU verification and optimizer-step benchmarks.\n\n\
        With no subcommand: info, then verify, then a quick benchmark (Adam and SGD-momentum at \
        1M and 4M elements, 1 and 1000 tensors).\n\n\
        Sizes accept plain integers and binary suffixes: 64k = 65536, 1M = 2^20, 2^24."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Adapter, backend, driver, the limits and features that matter, and the binding cap.
    Info,
    /// Every optimizer variant on the GPU against the CPU reference (exit status 1 on a FAIL).
    Verify {
        /// Steps per variant (tensors are frozen on some of them).
        #[arg(long, default_value_t = 7)]
        steps: usize,
        /// Perturb one GPU result element before comparison (to test the failure path).
        #[arg(long, hide = true)]
        inject_fault: bool,
    },
    /// Time one optimizer step per size, tensor count and optimizer, against a copy kernel.
    Bench,
    /// Sweep the copy kernel's workgroup size and vec4s per invocation.
    #[command(hide = true)]
    TuneCopy,
}

#[derive(Args, Debug, Clone)]
struct Opts {
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Adapter filter: a substring of the adapter name or a backend name (overrides
    /// WGPU_OPTIM_ADAPTER).
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Optimizers, comma-separated: sgd, sgd-momentum, sgd-nesterov, adam, adamw,
    /// adam-amsgrad, adamw-amsgrad, rmsprop, rmsprop-momentum, rmsprop-centered,
    /// rmsprop-centered-momentum, adagrad. For verify, a prefix filter on the variant names.
    #[arg(long, global = true, value_delimiter = ',')]
    optimizers: Vec<String>,
    /// Total elements per benchmark case, comma-separated (e.g. 1M,4M,16M).
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Tensor counts the elements are split into, comma-separated (e.g. 1,1000,10000).
    #[arg(long, global = true, value_delimiter = ',')]
    tensors: Vec<usize>,
    /// Timed batches per case (each batch queues several steps and waits once).
    #[arg(long, global = true)]
    iters: Option<usize>,
    /// Untimed warm-up steps per case, at least 1 (shaders compile on the first dispatch).
    #[arg(long, global = true)]
    warmup: Option<usize>,
    /// Fewer optimizers, sizes and iterations (the default run uses this).
    #[arg(long, global = true)]
    quick: bool,
    /// Draw GB/s against size per optimizer, with the copy kernel as the roofline (.png or .svg).
    #[arg(long, global = true, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Timer: GPU timestamp queries when available (auto), or force one.
    #[arg(long, global = true, value_enum, default_value_t = TimerArg::Auto)]
    timer: TimerArg,
    /// Skip the per-tensor (one optimizer per tensor) baseline.
    #[arg(long, global = true)]
    no_baseline: bool,
    /// Optimizers that get the per-tensor baseline ("all" for every one). Default: all with
    /// --quick, otherwise adam (or the first optimizer). It is slow: 10,000 tensors take about
    /// 35 s to set up and 0.6 s per step on an idle lavapipe machine.
    #[arg(long, global = true, value_delimiter = ',')]
    baseline_for: Vec<String>,
    /// Sizes at which the per-tensor baseline runs. Default: all with --quick, otherwise the
    /// smallest size (its time is dominated by per-dispatch overhead, not by the size).
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_size)]
    baseline_sizes: Vec<u64>,
    /// Skip the CPU reference timing.
    #[arg(long, global = true)]
    no_cpu: bool,
    /// Cap on workgroups per dispatch dimension, below the device limit (larger grids spill
    /// into y). For experiments with the grid shape.
    #[arg(long, global = true, value_name = "N")]
    max_workgroups_per_dim: Option<u32>,
    /// Cap on the bytes of one storage binding, below the device limit (larger arenas are
    /// processed in windows). For experiments with windowed arenas.
    #[arg(long, global = true, value_name = "BYTES", value_parser = parse_size)]
    max_binding_bytes: Option<u64>,
    /// Seed of the random data.
    #[arg(long, global = true, default_value_t = 0x5eed)]
    seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum TimerArg {
    Auto,
    Gpu,
    Wall,
}

impl From<TimerArg> for TimerChoice {
    fn from(t: TimerArg) -> Self {
        match t {
            TimerArg::Auto => TimerChoice::Auto,
            TimerArg::Gpu => TimerChoice::Gpu,
            TimerArg::Wall => TimerChoice::Wall,
        }
    }
}

/// `1234`, `64k` (2^16), `1M` (2^20), `1G`, `2^24`.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().replace('_', "");
    let bad = || format!("bad size {s:?}: use an integer, 64k, 1M, 1G or 2^N");
    if let Some(exp) = t.strip_prefix("2^") {
        let e: u32 = exp.parse().map_err(|_| bad())?;
        return 1u64.checked_shl(e).filter(|_| e < 40).ok_or_else(bad);
    }
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mul).ok_or_else(bad)
}

/// `1M`, `4k` or the plain number.
fn fmt_elems(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}k", n >> 10)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Tables and progress

/// Renders an aligned table: text columns left-aligned, the rest right-aligned.
fn table(headers: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < left {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(|s| s.as_str()).collect()));
        out.push('\n');
    }
    out
}

fn progress(len: u64, prefix: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn f3(x: f64) -> String {
    if x.is_finite() {
        if x >= 100.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.3}")
        }
    } else {
        "-".into()
    }
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

fn opt_f(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "-".into())
}

// ---------------------------------------------------------------------------------------------
// info

#[derive(Serialize, Debug)]
struct Info {
    adapter: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    vendor: u32,
    device: u32,
    max_storage_buffer_binding_size: u64,
    max_buffer_size: u64,
    max_compute_workgroups_per_dimension: u32,
    max_compute_invocations_per_workgroup: u32,
    min_storage_buffer_offset_alignment: u32,
    timestamp_query: bool,
    timestamp_query_inside_encoders: bool,
    timestamp_query_inside_passes: bool,
    timestamp_period_ns: f32,
    /// Bytes one storage binding covers in this context (arenas above are windowed).
    binding_cap_bytes: u64,
    /// Workgroups per dispatch dimension the context uses (larger grids spill into y).
    workgroups_per_dim_cap: u32,
    /// The timer `bench` uses by default on this adapter.
    default_timer: TimerKind,
}

fn info(ctx: &GpuContext) -> Info {
    let a = ctx.adapter_info();
    let l = ctx.limits();
    let f = ctx.features();
    Info {
        adapter: a.name.clone(),
        backend: format!("{:?}", a.backend),
        device_type: format!("{:?}", a.device_type),
        driver: a.driver.clone(),
        driver_info: a.driver_info.clone(),
        vendor: a.vendor,
        device: a.device,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        timestamp_query_inside_encoders: f
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
        timestamp_query_inside_passes: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
        timestamp_period_ns: ctx.queue().get_timestamp_period(),
        binding_cap_bytes: ctx.max_binding_bytes(),
        workgroups_per_dim_cap: ctx.max_workgroups_per_dim(),
        default_timer: if bench::encoder_timestamps_supported(ctx) {
            TimerKind::GpuTimestamps
        } else {
            TimerKind::WallClock
        },
    }
}

fn mib(b: u64) -> String {
    if b % (1 << 20) == 0 {
        format!("{b} ({} MiB)", b >> 20)
    } else {
        format!("{b} ({:.1} MiB)", b as f64 / (1u64 << 20) as f64)
    }
}

fn print_info(i: &Info) {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = vec![
        vec!["adapter".into(), i.adapter.clone()],
        vec!["backend".into(), i.backend.clone()],
        vec!["device type".into(), i.device_type.clone()],
        vec![
            "driver".into(),
            format!("{} ({})", i.driver, i.driver_info)
                .trim()
                .to_string(),
        ],
        vec![
            "max_storage_buffer_binding_size".into(),
            mib(i.max_storage_buffer_binding_size),
        ],
        vec!["max_buffer_size".into(), mib(i.max_buffer_size)],
        vec![
            "max_compute_workgroups_per_dimension".into(),
            i.max_compute_workgroups_per_dimension.to_string(),
        ],
        vec![
            "max_compute_invocations_per_workgroup".into(),
            i.max_compute_invocations_per_workgroup.to_string(),
        ],
        vec![
            "min_storage_buffer_offset_alignment".into(),
            i.min_storage_buffer_offset_alignment.to_string(),
        ],
        vec![
            "timestamps (query / in encoders / in passes)".into(),
            format!(
                "{} / {} / {}, period {} ns",
                yes(i.timestamp_query),
                yes(i.timestamp_query_inside_encoders),
                yes(i.timestamp_query_inside_passes),
                i.timestamp_period_ns
            ),
        ],
        vec![
            "binding cap used by the context".into(),
            mib(i.binding_cap_bytes),
        ],
        vec![
            "workgroups per dimension used".into(),
            i.workgroups_per_dim_cap.to_string(),
        ],
        vec!["bench timer".into(), i.default_timer.describe().into()],
    ];
    println!("== adapter");
    print!("{}", table(&["property", "value"], 2, &rows));
    println!();
}

// ---------------------------------------------------------------------------------------------
// Optimizer registry

/// The optimizers `bench` knows, by `OptimizerConfig::name()`.
fn bench_config(name: &str) -> Option<OptimizerConfig> {
    let sgd = SgdConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let rms = RmspropConfig::default();
    Some(match name {
        "sgd" => OptimizerConfig::Sgd(sgd),
        "sgd-momentum" => OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            ..sgd
        }),
        "sgd-nesterov" => OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            ..sgd
        }),
        "adam" => OptimizerConfig::Adam(AdamConfig::default()),
        "adamw" => OptimizerConfig::Adam(AdamConfig::adamw()),
        "adam-amsgrad" => OptimizerConfig::Adam(AdamConfig {
            amsgrad: true,
            ..Default::default()
        }),
        "adamw-amsgrad" => OptimizerConfig::Adam(AdamConfig {
            amsgrad: true,
            ..AdamConfig::adamw()
        }),
        "rmsprop" => OptimizerConfig::Rmsprop(rms),
        "rmsprop-momentum" => OptimizerConfig::Rmsprop(RmspropConfig {
            momentum: 0.9,
            ..rms
        }),
        "rmsprop-centered" => OptimizerConfig::Rmsprop(RmspropConfig {
            centered: true,
            ..rms
        }),
        "rmsprop-centered-momentum" => OptimizerConfig::Rmsprop(RmspropConfig {
            centered: true,
            momentum: 0.9,
            ..rms
        }),
        "adagrad" => OptimizerConfig::Adagrad(AdagradConfig::default()),
        // Weight decay on, so every tensor adapts (timm adapts only decayed groups).
        "lars" => OptimizerConfig::Lars(LarsConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            ..Default::default()
        }),
        "lamb" => OptimizerConfig::Lamb(LambConfig::default()),
        _ => return None,
    })
}

const BENCH_NAMES: [&str; 14] = [
    "sgd",
    "sgd-momentum",
    "sgd-nesterov",
    "adam",
    "adamw",
    "adam-amsgrad",
    "adamw-amsgrad",
    "rmsprop",
    "rmsprop-momentum",
    "rmsprop-centered",
    "rmsprop-centered-momentum",
    "adagrad",
    "lars",
    "lamb",
];

/// Every variant `verify` checks: each flag of each optimizer at least once.
fn verify_variants() -> Vec<(String, OptimizerConfig)> {
    let sgd = SgdConfig {
        lr: 0.05,
        ..Default::default()
    };
    let adam = AdamConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let adamw = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::adamw()
    };
    let rms = RmspropConfig::default();
    let ada = AdagradConfig {
        lr: 0.1,
        ..Default::default()
    };
    use OptimizerConfig as C;
    vec![
        ("sgd".into(), C::Sgd(sgd.clone())),
        (
            "sgd momentum=0.9".into(),
            C::Sgd(SgdConfig {
                momentum: 0.9,
                ..sgd.clone()
            }),
        ),
        (
            "sgd momentum=0.9 dampening=0.3".into(),
            C::Sgd(SgdConfig {
                momentum: 0.9,
                dampening: 0.3,
                ..sgd.clone()
            }),
        ),
        (
            "sgd nesterov momentum=0.9".into(),
            C::Sgd(SgdConfig {
                momentum: 0.9,
                nesterov: true,
                ..sgd.clone()
            }),
        ),
        (
            "sgd weight_decay=0.01".into(),
            C::Sgd(SgdConfig {
                weight_decay: 0.01,
                ..sgd.clone()
            }),
        ),
        (
            "sgd momentum weight_decay".into(),
            C::Sgd(SgdConfig {
                momentum: 0.8,
                weight_decay: 0.01,
                ..sgd.clone()
            }),
        ),
        (
            "sgd maximize momentum".into(),
            C::Sgd(SgdConfig {
                momentum: 0.9,
                maximize: true,
                ..sgd.clone()
            }),
        ),
        ("adam".into(), C::Adam(adam.clone())),
        (
            "adam weight_decay=0.01 (L2)".into(),
            C::Adam(AdamConfig {
                weight_decay: 0.01,
                ..adam.clone()
            }),
        ),
        (
            "adam amsgrad".into(),
            C::Adam(AdamConfig {
                amsgrad: true,
                ..adam.clone()
            }),
        ),
        (
            "adam maximize".into(),
            C::Adam(AdamConfig {
                maximize: true,
                ..adam.clone()
            }),
        ),
        (
            "adam betas=(0.8,0.99) eps=1e-6".into(),
            C::Adam(AdamConfig {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                ..adam.clone()
            }),
        ),
        ("adamw".into(), C::Adam(adamw.clone())),
        (
            "adamw amsgrad".into(),
            C::Adam(AdamConfig {
                amsgrad: true,
                ..adamw.clone()
            }),
        ),
        (
            "adamw maximize".into(),
            C::Adam(AdamConfig {
                maximize: true,
                ..adamw
            }),
        ),
        ("rmsprop".into(), C::Rmsprop(rms.clone())),
        (
            "rmsprop centered".into(),
            C::Rmsprop(RmspropConfig {
                centered: true,
                ..rms.clone()
            }),
        ),
        (
            "rmsprop momentum=0.9".into(),
            C::Rmsprop(RmspropConfig {
                momentum: 0.9,
                ..rms.clone()
            }),
        ),
        (
            "rmsprop centered momentum".into(),
            C::Rmsprop(RmspropConfig {
                centered: true,
                momentum: 0.9,
                ..rms.clone()
            }),
        ),
        (
            "rmsprop weight_decay maximize".into(),
            C::Rmsprop(RmspropConfig {
                weight_decay: 0.01,
                maximize: true,
                ..rms.clone()
            }),
        ),
        ("adagrad".into(), C::Adagrad(ada.clone())),
        (
            "adagrad lr_decay=0.01".into(),
            C::Adagrad(AdagradConfig {
                lr_decay: 0.01,
                ..ada.clone()
            }),
        ),
        (
            "adagrad initial_accumulator_value=0.1".into(),
            C::Adagrad(AdagradConfig {
                initial_accumulator_value: 0.1,
                ..ada.clone()
            }),
        ),
        (
            "adagrad weight_decay maximize".into(),
            C::Adagrad(AdagradConfig {
                weight_decay: 0.01,
                maximize: true,
                ..ada
            }),
        ),
        (
            "lars momentum=0.9 weight_decay=1e-4".into(),
            C::Lars(LarsConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..Default::default()
            }),
        ),
        (
            "larc (trust_clip) nesterov always_adapt".into(),
            C::Lars(LarsConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                trust_clip: true,
                always_adapt: true,
                ..Default::default()
            }),
        ),
        ("lamb".into(), C::Lamb(LambConfig::default())),
        (
            "lamb trust_clip always_adapt".into(),
            C::Lamb(LambConfig {
                trust_clip: true,
                always_adapt: true,
                ..Default::default()
            }),
        ),
    ]
}

/// Source and destination buffers for the copy kernel over `n` f32s (whole vec4s).
fn copy_buffers(ctx: &GpuContext, n: u64) -> (wgpu::Buffer, wgpu::Buffer) {
    let make = |label: &str| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: n.div_ceil(4) * 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    (make("copy_vec4 src"), make("copy_vec4 dst"))
}

// ---------------------------------------------------------------------------------------------
// verify

/// Tensor lengths `verify` uses: odd sizes, a single element, an empty tensor.
const VERIFY_LENS: [usize; 8] = [1, 257, 100_003, 0, 4_099, 64, 1_000, 3];

fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0
}

fn randn(rng: &mut fastrand::Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.f32() + rng.f32() + rng.f32() - 1.5) * 2.0 * scale)
        .collect()
}

#[derive(Serialize, Debug, Clone)]
struct VerifyRow {
    optimizer: String,
    buffer: String,
    elements: usize,
    max_abs_err: f64,
    max_rel_err: f64,
    pass: bool,
}

#[derive(Serialize, Debug)]
struct VerifyReport {
    atol: f64,
    rtol: f64,
    steps: usize,
    lengths: Vec<usize>,
    fault_injected: bool,
    rows: Vec<VerifyRow>,
    passed: bool,
}

/// Norms against the f64 reference: per-tensor and global, L2 and inf, relative error.
fn verify_norms(ctx: &GpuContext, rng: &mut fastrand::Rng) -> Result<Vec<VerifyRow>> {
    let mut lens: Vec<usize> = VERIFY_LENS.to_vec();
    lens.extend((0..1000).map(|_| rng.usize(0..300)));
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let arena = ParamArena::new(ctx, &specs)?;
    let data: Vec<Vec<f32>> = lens.iter().map(|&n| randn(rng, n, 1.0)).collect();
    arena.write_all_params(ctx, &data)?;
    let mut rows = Vec::new();
    for (norm_type, name) in [(NormType::L2, "l2"), (NormType::Inf, "inf")] {
        let r = NormReducer::new(ctx, &arena, arena.params_buffer(), norm_type)?;
        let (per, total) = r.compute(ctx)?;
        let (want_per, want_total) = cpu_norms(&data, norm_type);
        let mut c = Cmp::default();
        for (&g, &w) in per.iter().zip(&want_per) {
            c.add_rel(g as f64, w);
        }
        rows.push(c.row(
            &format!("norm {name}"),
            "per-tensor norms",
            lens.iter().sum(),
        ));
        let mut c = Cmp::default();
        c.add_rel(total as f64, want_total);
        rows.push(c.row(&format!("norm {name}"), "global norm", lens.iter().sum()));
    }
    Ok(rows)
}

/// Norms are compared by relative error alone: the f32 tree sums are within NORM_RTOL of the
/// exact value (bound derived in shaders/reduce.wgsl).
const NORM_RTOL: f64 = 1e-5;

/// Running comparison of one buffer.
#[derive(Default)]
struct Cmp {
    elements: usize,
    max_abs: f64,
    max_rel: f64,
    fail: bool,
}

impl Cmp {
    /// One norm, by relative error (`NORM_RTOL`).
    fn add_rel(&mut self, got: f64, want: f64) {
        let d = (got - want).abs();
        self.elements += 1;
        self.max_abs = self.max_abs.max(d);
        let rel = if want == 0.0 { d } else { d / want.abs() };
        self.max_rel = self.max_rel.max(rel);
        if rel.is_nan() || rel > NORM_RTOL {
            self.fail = true;
        }
    }

    fn row(&self, optimizer: &str, buffer: &str, elements: usize) -> VerifyRow {
        VerifyRow {
            optimizer: optimizer.to_string(),
            buffer: buffer.to_string(),
            elements,
            max_abs_err: self.max_abs,
            max_rel_err: self.max_rel,
            pass: !self.fail,
        }
    }

    fn add(&mut self, got: &[f32], want: &[f32]) {
        if got.len() != want.len() {
            self.fail = true;
            return;
        }
        self.elements = self.elements.max(got.len());
        for (&g, &w) in got.iter().zip(want) {
            let (g, w) = (g as f64, w as f64);
            let d = (g - w).abs();
            if d.is_nan() && !(g.is_nan() && w.is_nan()) {
                self.fail = true;
                self.max_abs = f64::INFINITY;
                continue;
            }
            if d.is_nan() {
                continue;
            }
            self.max_abs = self.max_abs.max(d);
            if w != 0.0 {
                self.max_rel = self.max_rel.max(d / w.abs());
            }
            if d > ATOL + RTOL * w.abs() {
                self.fail = true;
            }
        }
    }
}

/// A `verify` case: label, optimizer, and the (max_norm, norm) of attached clipping.
type VerifyVariant = (String, OptimizerConfig, Option<(f64, NormType)>);

/// Variants checked with global-norm clipping attached: (label, optimizer, max_norm, norm).
fn clip_variants() -> Vec<(String, OptimizerConfig, f64, NormType)> {
    let mut out = Vec::new();
    for (label, cfg) in verify_variants() {
        let clip = match label.as_str() {
            "adam" | "lamb" => (1.0, NormType::L2),
            "sgd momentum=0.9" => (0.1, NormType::Inf),
            "lars momentum=0.9 weight_decay=1e-4" => (0.5, NormType::L2),
            _ => continue,
        };
        let kind = if clip.1 == NormType::L2 { "l2" } else { "inf" };
        out.push((
            format!("{label} + clip_grad_norm({}, {kind})", clip.0),
            cfg,
            clip.0,
            clip.1,
        ));
    }
    out
}

fn verify(ctx: &GpuContext, opts: &Opts, steps: usize, inject_fault: bool) -> Result<VerifyReport> {
    let variants: Vec<VerifyVariant> = verify_variants()
        .into_iter()
        .map(|(l, c)| (l, c, None))
        .chain(
            clip_variants()
                .into_iter()
                .map(|(l, c, m, n)| (l, c, Some((m, n)))),
        )
        .filter(|(label, cfg, _)| {
            opts.optimizers.is_empty()
                || opts
                    .optimizers
                    .iter()
                    .any(|f| label.starts_with(f.as_str()) || cfg.name() == f)
        })
        .collect();
    if variants.is_empty() {
        bail!(
            "--optimizers {:?} matches no verify variant",
            opts.optimizers
        );
    }
    let lens = VERIFY_LENS;
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect();
    let pb = progress(variants.len() as u64, "verify");
    let mut rows = Vec::new();
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    for (vi, (label, cfg, clip)) in variants.iter().enumerate() {
        pb.set_message(label.clone());
        let arena = ParamArena::new(ctx, &specs)?;
        let mut gpu = cfg.build(ctx, &arena)?;
        let mut cpu = cfg.build_cpu(&specs)?;
        let clipper = match clip {
            Some((max_norm, norm_type)) => {
                let c = std::sync::Arc::new(GradClipper::new(ctx, &arena, *max_norm, *norm_type)?);
                gpu.set_grad_clip(ctx, Some(c.clone()))?;
                Some(c)
            }
            None => None,
        };
        let mut norm_cmp = Cmp::default();
        // Group 1 (odd tensors) gets its own lr and weight decay.
        let g1 = GroupHyper {
            lr: cfg.lr() * 0.5,
            weight_decay: 0.02,
        };
        gpu.set_group(1, g1)?;
        cpu.set_group(1, g1)?;
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(ctx, &params)?;
        let names = gpu.state_names();
        let mut cmps: Vec<Cmp> = (0..=names.len()).map(|_| Cmp::default()).collect();
        for k in 0..steps {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            arena.write_all_grads(ctx, &grads)?;
            for i in 0..lens.len() {
                let fz = frozen(k, i);
                gpu.set_frozen(&format!("t{i}"), fz)?;
                cpu.set_frozen_index(i, fz)?;
            }
            if k == 4 {
                // What a scheduler does between steps.
                gpu.set_lr(cfg.lr() * 0.3)?;
                cpu.set_lr(cfg.lr() * 0.3)?;
            }
            gpu.step(ctx, &arena)?;
            let mut grads = grads;
            if let (Some(c), Some((max_norm, norm_type))) = (&clipper, clip) {
                // clip-then-step on the CPU, f64 norms; the GPU fuses the clip into the step.
                let want = cpu_clip_grad_norm(&mut grads, *max_norm, *norm_type)?;
                let got = c.read_total_norm(ctx)? as f64;
                norm_cmp.add_rel(got, want);
            }
            cpu.step(&mut params, &grads)?;
            let mut got = arena.read_all_params(ctx)?;
            if inject_fault && vi == 0 && k + 1 == steps {
                got[1][100] += 1.0;
            }
            for (i, g) in got.iter().enumerate() {
                cmps[0].add(g, &params[i]);
            }
            for (s, name) in names.iter().enumerate() {
                let img = gpu.read_state_image(ctx, name)?;
                let got = arena.layout().unpack(&img);
                for (i, g) in got.iter().enumerate() {
                    cmps[s + 1].add(g, cpu.state(name, i)?);
                }
            }
        }
        if clipper.is_some() {
            rows.push(norm_cmp.row(label, "pre-clip grad norm", lens.iter().sum()));
        }
        for (s, c) in cmps.into_iter().enumerate() {
            rows.push(VerifyRow {
                optimizer: label.clone(),
                buffer: if s == 0 {
                    "param".into()
                } else {
                    names[s - 1].into()
                },
                elements: lens.iter().sum(),
                max_abs_err: c.max_abs,
                max_rel_err: c.max_rel,
                pass: !c.fail,
            });
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if opts.optimizers.is_empty() || opts.optimizers.iter().any(|o| o == "norm") {
        rows.extend(verify_norms(ctx, &mut rng)?);
    }
    let passed = rows.iter().all(|r| r.pass);
    Ok(VerifyReport {
        atol: ATOL,
        rtol: RTOL,
        steps,
        lengths: lens.to_vec(),
        fault_injected: inject_fault,
        rows,
        passed,
    })
}

fn print_verify(r: &VerifyReport) {
    println!(
        "== verify: GPU vs CPU reference, {} steps, tensors of {:?} elements (groups 0/1, some \
         frozen each step), every buffer compared after every step",
        r.steps, r.lengths
    );
    println!(
        "   PASS when |gpu - cpu| <= {:e} + {:e} * |cpu| everywhere; max rel err is over \
         non-zero reference elements",
        r.atol, r.rtol
    );
    let e = |x: f64| {
        if x.is_finite() {
            format!("{x:.2e}")
        } else {
            "inf".into()
        }
    };
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|x| {
            vec![
                x.optimizer.clone(),
                x.buffer.clone(),
                e(x.max_abs_err),
                e(x.max_rel_err),
                if x.pass { "PASS" } else { "FAIL" }.into(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "optimizer",
                "state buffer",
                "max abs err",
                "max rel err",
                "result"
            ],
            2,
            &rows
        )
    );
    let fails = r.rows.iter().filter(|x| !x.pass).count();
    if fails == 0 {
        println!("all {} buffers PASS", r.rows.len());
    } else {
        println!("{fails} of {} buffers FAIL", r.rows.len());
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// bench

#[derive(Debug, Clone)]
struct BenchPlan {
    optimizers: Vec<(String, OptimizerConfig)>,
    sizes: Vec<u64>,
    tensors: Vec<usize>,
    iters: usize,
    warmup: usize,
    /// Each timed batch should take about this long (wall clock).
    batch_target_s: f64,
    /// (optimizer, size) pairs that get the per-tensor baseline.
    baseline: Vec<(String, u64)>,
    cpu: bool,
}

impl BenchPlan {
    fn from_opts(opts: &Opts, quick: bool) -> Result<Self> {
        let names: Vec<String> = if !opts.optimizers.is_empty() {
            opts.optimizers.clone()
        } else if quick {
            vec!["adam".into(), "sgd-momentum".into()]
        } else {
            [
                "sgd",
                "sgd-momentum",
                "adam",
                "adamw",
                "adam-amsgrad",
                "rmsprop",
                "rmsprop-centered-momentum",
                "adagrad",
            ]
            .map(String::from)
            .to_vec()
        };
        let optimizers = names
            .iter()
            .map(|n| {
                bench_config(n).map(|c| (n.clone(), c)).ok_or_else(|| {
                    anyhow!("unknown optimizer {n:?}; known: {}", BENCH_NAMES.join(", "))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sizes = if !opts.sizes.is_empty() {
            opts.sizes.clone()
        } else if quick {
            vec![1 << 20, 1 << 22]
        } else {
            vec![1 << 20, 1 << 22, 1 << 24]
        };
        let tensors = if !opts.tensors.is_empty() {
            opts.tensors.clone()
        } else if quick {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000]
        };
        if sizes.contains(&0) || tensors.contains(&0) {
            bail!("sizes and tensor counts must be positive");
        }
        let baseline_for: Vec<String> = if opts.no_baseline {
            Vec::new()
        } else if opts.baseline_for.iter().any(|s| s == "all")
            || (opts.baseline_for.is_empty() && quick)
        {
            names.clone()
        } else if opts.baseline_for.is_empty() {
            let adam = names.iter().find(|n| *n == "adam");
            vec![adam.unwrap_or(&names[0]).clone()]
        } else {
            opts.baseline_for.clone()
        };
        let baseline_sizes: Vec<u64> = if !opts.baseline_sizes.is_empty() {
            opts.baseline_sizes.clone()
        } else if quick {
            sizes.clone()
        } else {
            sizes.iter().min().into_iter().copied().collect()
        };
        let mut baseline = Vec::new();
        for n in &baseline_for {
            if !names.contains(n) {
                bail!("--baseline-for {n:?} is not among the benchmarked optimizers {names:?}");
            }
            for &s in &baseline_sizes {
                if !sizes.contains(&s) {
                    bail!("--baseline-sizes {s} is not among the benchmarked sizes {sizes:?}");
                }
                baseline.push((n.clone(), s));
            }
        }
        Ok(Self {
            optimizers,
            sizes,
            tensors,
            iters: opts.iters.unwrap_or(if quick { 5 } else { 10 }).max(1),
            warmup: opts.warmup.unwrap_or(if quick { 2 } else { 3 }),
            batch_target_s: if quick { 0.02 } else { 0.05 },
            baseline,
            cpu: !opts.no_cpu,
        })
    }
}

#[derive(Serialize, Debug, Clone)]
struct CopyRow {
    elements: u64,
    steps_per_batch: u32,
    /// Per-copy times measured before the optimizer cases of this size.
    ms_before: Summary,
    /// Per-copy times measured after them.
    ms_after: Summary,
    /// GB/s of the faster of the two medians: the roofline for this size.
    gb_per_s: f64,
}

#[derive(Serialize, Debug, Clone)]
struct HostMemcpy {
    bytes: usize,
    threads: usize,
    gb_per_s: Summary,
    single_thread_gb_per_s: Summary,
}

#[derive(Serialize, Debug, Clone)]
struct BaselineRow {
    /// One arena, one optimizer and one dispatch (its own pass) per tensor, all in one
    /// submission per step.
    ms: Summary,
    steps_per_batch: u32,
    /// Per-tensor median time / fused median time.
    fused_speedup: f64,
}

#[derive(Serialize, Debug, Clone)]
struct CpuRow {
    ms: Summary,
    gb_per_s: f64,
}

#[derive(Serialize, Debug, Clone)]
struct CaseRow {
    optimizer: String,
    elements: u64,
    tensors: usize,
    bytes_per_element: u64,
    dispatches_per_step: usize,
    steps_per_batch: u32,
    /// Per-step time by the run's timer.
    ms: Summary,
    /// Per-step host wall clock (median), for comparison with the GPU timer.
    wall_ms_median: f64,
    /// bytes_per_element * elements / median time.
    gb_per_s: f64,
    /// gb_per_s / the copy kernel's GB/s at the same element count.
    fraction_of_copy: f64,
    /// Median time / the median time of one tensor of the same size (same optimizer).
    time_vs_one_tensor: Option<f64>,
    per_tensor_baseline: Option<BaselineRow>,
    cpu_reference: Option<CpuRow>,
}

#[derive(Serialize, Debug)]
struct BenchReport {
    adapter: String,
    timer: TimerKind,
    timer_description: &'static str,
    iters: usize,
    warmup: usize,
    copy_kernel: CopyConfig,
    copy: Vec<CopyRow>,
    /// The best copy-kernel GB/s of the run (the plot's roofline).
    roofline_gb_per_s: f64,
    host_memcpy: Option<HostMemcpy>,
    /// (optimizer, elements) pairs for which the per-tensor baseline ran (tensor counts > 1).
    per_tensor_baseline_for: Vec<(String, u64)>,
    cases: Vec<CaseRow>,
    total_s: f64,
    /// 1-minute load average at the start and end of the run (Linux), to judge noise: other
    /// processes on the machine compete with lavapipe's threads.
    load_average_start: Option<f64>,
    load_average_end: Option<f64>,
}

/// 1-minute load average from /proc/loadavg (None elsewhere).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Splits `n` elements into `t` tensors of nearly equal length.
fn split(n: u64, t: usize) -> Vec<usize> {
    let t64 = t as u64;
    (0..t64)
        .map(|i| (n / t64 + u64::from(i < n % t64)) as usize)
        .collect()
}

fn slices<'a>(flat: &'a [f32], lens: &[usize]) -> Vec<&'a [f32]> {
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let s = &flat[at..at + n];
            at += n;
            s
        })
        .collect()
}

/// Warm up with `warmup` steps (at least one: shaders compile on the first dispatch), size the
/// batch K from a calibration batch so a batch lasts about `target_s` (K >= `k_min`; K = 1
/// without calibration when one step takes over half a second, where submit overhead is
/// negligible), then take `iters` timed batches. Returns the per-step times in ms by the
/// timer, the wall-clock per-step ms, and K.
fn measure<F>(
    ctx: &GpuContext,
    timer: &StepTimer,
    warmup: usize,
    iters: usize,
    target_s: f64,
    k_min: u32,
    mut record: F,
) -> Result<(Vec<f64>, Vec<f64>, u32)>
where
    F: FnMut(&mut wgpu::CommandEncoder) -> wgpu_optim::Result<()>,
{
    let warm = timer.time_batch(ctx, warmup.max(1) as u32, |e, _| record(e))?;
    let k = if warm.wall_per_step_s() > 0.5 {
        1
    } else {
        let calib = timer.time_batch(ctx, k_min.max(1), |e, _| record(e))?;
        let t = calib.wall_per_step_s().max(1e-7);
        ((target_s / t).ceil() as u32).clamp(k_min.max(1), 1000)
    };
    let mut ms = Vec::with_capacity(iters);
    let mut wall = Vec::with_capacity(iters);
    for _ in 0..iters {
        let b = timer.time_batch(ctx, k, |e, _| record(e))?;
        ms.push(b.per_step_s() * 1e3);
        wall.push(b.wall_per_step_s() * 1e3);
    }
    Ok((ms, wall, k))
}

fn summary(x: &[f64]) -> Result<Summary> {
    Summary::of(x).ok_or_else(|| anyhow!("no valid samples"))
}

fn bench(ctx: &GpuContext, opts: &Opts, plan: &BenchPlan) -> Result<BenchReport> {
    let started = Instant::now();
    let load_start = load_average();
    let timer = StepTimer::new(ctx, opts.timer.into())?;
    let copy_kernel = CopyKernel::new(ctx)?;
    let baseline_counts = plan.tensors.iter().filter(|&&t| t > 1).count();
    let cases = plan.sizes.len() * plan.optimizers.len() * plan.tensors.len();
    let work = 2 * plan.sizes.len() + cases + plan.baseline.len() * baseline_counts;
    let pb = progress(work as u64, "bench");
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let is_cpu_adapter = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let host = if is_cpu_adapter {
        pb.set_message("host memcpy");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bytes = 128 << 20;
        let reps = if plan.iters <= 5 { 5 } else { 10 };
        Some(HostMemcpy {
            bytes,
            threads,
            gb_per_s: summary(&host_memcpy(bytes, threads, reps))?,
            single_thread_gb_per_s: summary(&host_memcpy(bytes, 1, reps))?,
        })
    } else {
        None
    };
    let mut copy_rows = Vec::new();
    let mut rows: Vec<CaseRow> = Vec::new();
    for &n in &plan.sizes {
        let params_flat = randn(&mut rng, n as usize, 1.0);
        let grads_flat = randn(&mut rng, n as usize, 0.5);

        // The copy roofline at this size, measured before and after this size's cases: the
        // machine is shared, and a transient slowdown during one measurement would otherwise
        // lower the roofline for every case.
        pb.set_message(format!("copy {}", fmt_elems(n)));
        let (copy_src, copy_dst) = copy_buffers(ctx, n);
        ctx.queue()
            .write_buffer(&copy_src, 0, bytemuck::cast_slice(&params_flat));
        let job = copy_kernel.bind(ctx, &copy_src, &copy_dst, n)?;
        let measure_copy = || {
            measure(
                ctx,
                &timer,
                plan.warmup,
                plan.iters,
                plan.batch_target_s,
                3,
                |e| {
                    job.encode(e);
                    Ok(())
                },
            )
        };
        let (copy_ms, _, copy_k) = measure_copy()?;
        let copy_before = summary(&copy_ms)?;
        let first_row = rows.len();
        pb.inc(1);

        for (name, cfg) in &plan.optimizers {
            for &t in &plan.tensors {
                let lens = split(n, t);
                let specs: Vec<TensorSpec> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| TensorSpec::new(format!("t{i}"), l))
                    .collect();
                let parts_p = slices(&params_flat, &lens);
                let parts_g = slices(&grads_flat, &lens);
                pb.set_message(format!("{name} {} x{t}", fmt_elems(n)));

                // The fused multi-tensor step.
                let arena = ParamArena::new(ctx, &specs)?;
                arena.write_all_params(ctx, &parts_p)?;
                arena.write_all_grads(ctx, &parts_g)?;
                let mut opt = cfg.build(ctx, &arena)?;
                let (ms, wall, k) = measure(
                    ctx,
                    &timer,
                    plan.warmup,
                    plan.iters,
                    plan.batch_target_s,
                    3,
                    |e| opt.encode_step(ctx, e, &arena),
                )?;
                let s = summary(&ms)?;
                let bpe = cfg.bytes_per_element();
                let gbs = gb_per_s((n * bpe) as f64, s.median * 1e-3);
                let dispatches = opt.dispatches_per_step();
                drop(opt);
                drop(arena);
                pb.inc(1);

                // The naive loop: one arena, one optimizer and one dispatch per tensor.
                let baseline = if t > 1 && plan.baseline.contains(&(name.clone(), n)) {
                    pb.set_message(format!("{name} {} x{t} per-tensor", fmt_elems(n)));
                    let mut per: Vec<(ParamArena, Box<dyn DynOptimizer>)> = Vec::with_capacity(t);
                    for (i, spec) in specs.iter().enumerate() {
                        let a = ParamArena::new(ctx, std::slice::from_ref(spec))?;
                        if lens[i] > 0 {
                            a.write_params(ctx, &spec.name, parts_p[i])?;
                            a.write_grads(ctx, &spec.name, parts_g[i])?;
                        }
                        let o = cfg.build(ctx, &a)?;
                        per.push((a, o));
                    }
                    let (bms, _, bk) = measure(
                        ctx,
                        &timer,
                        1,
                        plan.iters.min(3),
                        plan.batch_target_s,
                        2,
                        |e| {
                            for (a, o) in per.iter_mut() {
                                o.encode_step(ctx, e, a)?;
                            }
                            Ok(())
                        },
                    )?;
                    let bs = summary(&bms)?;
                    pb.inc(1);
                    Some(BaselineRow {
                        ms: bs,
                        steps_per_batch: bk,
                        fused_speedup: bs.median / s.median,
                    })
                } else {
                    None
                };

                // The CPU reference, single-threaded, on the same data.
                let cpu_row = if plan.cpu {
                    pb.set_message(format!("{name} {} x{t} cpu", fmt_elems(n)));
                    let mut cpu = cfg.build_cpu(&specs)?;
                    let mut p: Vec<Vec<f32>> = parts_p.iter().map(|s| s.to_vec()).collect();
                    let g: Vec<Vec<f32>> = parts_g.iter().map(|s| s.to_vec()).collect();
                    cpu.step(&mut p, &g)?;
                    let mut cms = Vec::new();
                    for _ in 0..plan.iters.min(5) {
                        let t0 = Instant::now();
                        cpu.step(&mut p, &g)?;
                        cms.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    std::hint::black_box(&p);
                    let cs = summary(&cms)?;
                    Some(CpuRow {
                        ms: cs,
                        gb_per_s: gb_per_s((n * bpe) as f64, cs.median * 1e-3),
                    })
                } else {
                    None
                };

                rows.push(CaseRow {
                    optimizer: name.clone(),
                    elements: n,
                    tensors: t,
                    bytes_per_element: bpe,
                    dispatches_per_step: dispatches,
                    steps_per_batch: k,
                    ms: s,
                    wall_ms_median: summary(&wall)?.median,
                    gb_per_s: gbs,
                    fraction_of_copy: f64::NAN,
                    time_vs_one_tensor: None,
                    per_tensor_baseline: baseline,
                    cpu_reference: cpu_row,
                });
            }
        }
        pb.set_message(format!("copy {}", fmt_elems(n)));
        let (copy_ms, _, _) = measure_copy()?;
        let copy_after = summary(&copy_ms)?;
        let best_ms = copy_before.median.min(copy_after.median);
        let copy_gbs = gb_per_s((n * COPY_BYTES_PER_ELEMENT) as f64, best_ms * 1e-3);
        for r in &mut rows[first_row..] {
            r.fraction_of_copy = r.gb_per_s / copy_gbs;
        }
        copy_rows.push(CopyRow {
            elements: n,
            steps_per_batch: copy_k,
            ms_before: copy_before,
            ms_after: copy_after,
            gb_per_s: copy_gbs,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let one: Vec<(String, u64, f64)> = rows
        .iter()
        .filter(|r| r.tensors == 1)
        .map(|r| (r.optimizer.clone(), r.elements, r.ms.median))
        .collect();
    for r in &mut rows {
        r.time_vs_one_tensor = one
            .iter()
            .find(|(o, n, _)| *o == r.optimizer && *n == r.elements)
            .map(|(_, _, m)| r.ms.median / m);
    }
    let roofline = copy_rows.iter().map(|c| c.gb_per_s).fold(0.0, f64::max);
    Ok(BenchReport {
        adapter: format!(
            "{} ({:?}, {:?})",
            ctx.adapter_info().name,
            ctx.adapter_info().backend,
            ctx.adapter_info().device_type
        ),
        timer: timer.kind(),
        timer_description: timer.kind().describe(),
        iters: plan.iters,
        warmup: plan.warmup,
        copy_kernel: copy_kernel.config(),
        copy: copy_rows,
        roofline_gb_per_s: roofline,
        host_memcpy: host,
        per_tensor_baseline_for: plan.baseline.clone(),
        cases: rows,
        total_s: started.elapsed().as_secs_f64(),
        load_average_start: load_start,
        load_average_end: load_average(),
    })
}

fn print_bench(r: &BenchReport) {
    println!("== bench on {}", r.adapter);
    println!(
        "   timer: {}; {} timed batches per case after {} warm-up steps; each batch queues K \
         steps (one submission each) and waits once; times are per step",
        r.timer_description, r.iters, r.warmup
    );
    println!(
        "   GB/s = SPEC §5 bytes/element x elements / median step time (decimal GB); \
         copy kernel: {} invocations x {} vec4, 8 B/element",
        r.copy_kernel.workgroup_size, r.copy_kernel.vec4_per_invocation
    );
    if let Some(h) = &r.host_memcpy {
        println!(
            "   host memcpy ({} MiB, read+write counted): {:.1} GB/s on {} threads \
             (p10 {:.1}, p90 {:.1}), {:.1} GB/s on 1 thread",
            h.bytes >> 20,
            h.gb_per_s.median,
            h.threads,
            h.gb_per_s.p10,
            h.gb_per_s.p90,
            h.single_thread_gb_per_s.median
        );
    }
    println!();
    println!("copy kernel (roofline), measured before and after each size's optimizer cases");
    let rows: Vec<Vec<String>> = r
        .copy
        .iter()
        .map(|c| {
            vec![
                fmt_elems(c.elements),
                c.steps_per_batch.to_string(),
                f3(c.ms_before.median),
                f3(c.ms_before.p10),
                f3(c.ms_before.p90),
                f3(c.ms_after.median),
                f3(c.ms_after.p10),
                f3(c.ms_after.p90),
                f2(c.gb_per_s),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "elements",
                "K",
                "before: median ms",
                "p10",
                "p90",
                "after: median ms",
                "p10",
                "p90",
                "GB/s (faster median)",
            ],
            1,
            &rows
        )
    );
    println!();
    println!("optimizer step (fused, one dispatch per step for all tensors)");
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            vec![
                c.optimizer.clone(),
                fmt_elems(c.elements),
                c.tensors.to_string(),
                c.bytes_per_element.to_string(),
                c.steps_per_batch.to_string(),
                f3(c.ms.median),
                f3(c.ms.p10),
                f3(c.ms.p90),
                f3(c.wall_ms_median),
                f2(c.gb_per_s),
                f2(c.fraction_of_copy),
                opt_f(c.time_vs_one_tensor, f2),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "optimizer",
                "elements",
                "tensors",
                "B/elem",
                "K",
                "median ms",
                "p10 ms",
                "p90 ms",
                "wall ms",
                "GB/s",
                "x copy",
                "x 1-tensor time",
            ],
            1,
            &rows
        )
    );
    println!();
    println!(
        "baselines: per-tensor = one arena + optimizer + dispatch per tensor (one pass each, \
         one submission per step); CPU = CpuOptimizer, 1 thread"
    );
    let runs: Vec<String> = r
        .per_tensor_baseline_for
        .iter()
        .map(|(o, n)| format!("{o} at {}", fmt_elems(*n)))
        .collect();
    println!(
        "per-tensor baseline measured for: {} (--baseline-for, --baseline-sizes)",
        if runs.is_empty() {
            "none".to_string()
        } else {
            runs.join(", ")
        }
    );
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            let b = c.per_tensor_baseline.as_ref();
            let cpu = c.cpu_reference.as_ref();
            vec![
                c.optimizer.clone(),
                fmt_elems(c.elements),
                c.tensors.to_string(),
                f3(c.ms.median),
                opt_f(b.map(|b| b.ms.median), f3),
                opt_f(b.map(|b| b.fused_speedup), f2),
                opt_f(cpu.map(|c| c.ms.median), f3),
                opt_f(cpu.map(|c| c.gb_per_s), f2),
                opt_f(cpu.map(|x| x.ms.median / c.ms.median), f2),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "optimizer",
                "elements",
                "tensors",
                "fused ms",
                "per-tensor ms",
                "fused speedup",
                "CPU ms",
                "CPU GB/s",
                "GPU speedup vs CPU",
            ],
            1,
            &rows
        )
    );
    println!();
    print!("bench took {:.1} s", r.total_s);
    if let (Some(a), Some(b)) = (r.load_average_start, r.load_average_end) {
        print!("; 1-min load average {a:.2} at start, {b:.2} at end");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// tune-copy

#[derive(Serialize, Debug)]
struct TuneRow {
    workgroup_size: u32,
    vec4_per_invocation: u32,
    elements: u64,
    ms: Summary,
    gb_per_s: f64,
}

#[derive(Serialize, Debug)]
struct TuneReport {
    timer: TimerKind,
    rows: Vec<TuneRow>,
}

fn tune_copy(ctx: &GpuContext, opts: &Opts) -> Result<TuneReport> {
    let timer = StepTimer::new(ctx, opts.timer.into())?;
    let sizes = if opts.sizes.is_empty() {
        vec![1 << 22, 1 << 24]
    } else {
        opts.sizes.clone()
    };
    let iters = opts.iters.unwrap_or(10).max(1);
    let max_wg = ctx.limits().max_compute_invocations_per_workgroup;
    let configs: Vec<CopyConfig> = [64u32, 128, 256, 512]
        .into_iter()
        .filter(|&w| w <= max_wg)
        .flat_map(|w| {
            [1u32, 2, 4, 8].map(|v| CopyConfig {
                workgroup_size: w,
                vec4_per_invocation: v,
            })
        })
        .collect();
    let pb = progress((sizes.len() * configs.len()) as u64, "tune");
    let mut out = Vec::new();
    for &n in &sizes {
        let (src, dst) = copy_buffers(ctx, n);
        // Interleave configurations over rounds so drift hits them all alike.
        let jobs = configs
            .iter()
            .map(|&c| {
                let k = CopyKernel::with_config(ctx, c)?;
                let j = k.bind(ctx, &src, &dst, n)?;
                Ok((c, k, j))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
        for (_, _, j) in &jobs {
            timer.time_batch(ctx, 3, |e, _| {
                j.encode(e);
                Ok(())
            })?;
        }
        for _ in 0..iters {
            for (i, (_, _, j)) in jobs.iter().enumerate() {
                let b = timer.time_batch(ctx, 5, |e, _| {
                    j.encode(e);
                    Ok(())
                })?;
                samples[i].push(b.per_step_s() * 1e3);
            }
        }
        for (i, (c, _, _)) in jobs.iter().enumerate() {
            let s = summary(&samples[i])?;
            out.push(TuneRow {
                workgroup_size: c.workgroup_size,
                vec4_per_invocation: c.vec4_per_invocation,
                elements: n,
                ms: s,
                gb_per_s: gb_per_s((n * COPY_BYTES_PER_ELEMENT) as f64, s.median * 1e-3),
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(TuneReport {
        timer: timer.kind(),
        rows: out,
    })
}

// ---------------------------------------------------------------------------------------------
// plot

/// Loads a system TTF and registers it as plotters' "sans-serif".
fn register_font() -> Result<()> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("OPTBENCH_FONT") {
        candidates.push(p.into());
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/noto/NotoSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
        "/Library/Fonts/Arial.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ] {
        candidates.push(p.into());
    }
    for p in &candidates {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                return Ok(());
            }
        }
    }
    bail!(
        "--plot needs a TrueType font for its text and found none (looked at {}). Install one \
         (Debian/Ubuntu: `apt-get install fonts-dejavu-core`; Fedora: `dnf install \
         dejavu-sans-fonts`) or set OPTBENCH_FONT=/path/to/font.ttf",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn plot(r: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    const W: u32 = 1000;
    const H: u32 = 640;
    fn draw<DB: DrawingBackend>(
        r: &BenchReport,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
        root.fill(&WHITE).map_err(err)?;
        let xs: Vec<f64> = r.cases.iter().map(|c| c.elements as f64).collect();
        let xmin = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let xmax = xs.iter().cloned().fold(0.0, f64::max);
        let (xmin, xmax) = if xmin < xmax {
            (xmin / 1.5, xmax * 1.5)
        } else {
            (xmin / 2.0, xmax * 2.0)
        };
        let ymax = r
            .cases
            .iter()
            .map(|c| c.gb_per_s)
            .fold(r.roofline_gb_per_s, f64::max)
            * 1.6; // room above the roofline for the legend
                   // One line per optimizer, at the run's smallest tensor count (one tensor by default).
        let t_min = r.cases.iter().map(|c| c.tensors).min().unwrap_or(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "optimizer step throughput ({t_min} tensor{}), {}",
                    if t_min == 1 { "" } else { "s" },
                    r.adapter
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale().base(2.0), 0.0..ymax.max(1e-3))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("elements per step (all tensors)")
            .y_desc("GB/s (bytes moved per step / step time)")
            .x_label_formatter(&|x| fmt_elems(x.round() as u64))
            .x_labels(12)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        let roof = r.roofline_gb_per_s;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin, roof), (xmax, roof)],
                10,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("copy kernel {roof:.2} GB/s (roofline)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        let mut series: Vec<(String, usize)> = Vec::new();
        for c in &r.cases {
            let key = (c.optimizer.clone(), t_min);
            if !series.contains(&key) {
                series.push(key);
            }
        }
        for (i, (name, t)) in series.iter().enumerate() {
            // matplotlib's tab10: distinct on white.
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
            let (cr, cg, cb) = TAB10[i % TAB10.len()];
            let color = RGBColor(cr, cg, cb).to_rgba();
            let pts: Vec<(f64, f64)> = r
                .cases
                .iter()
                .filter(|c| &c.optimizer == name && c.tensors == *t)
                .map(|c| (c.elements as f64, c.gb_per_s))
                .collect();
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => draw(r, SVGBackend::new(path, (W, H)).into_drawing_area()),
        Some("png") => {
            let mut buf = vec![0u8; (W * H * 3) as usize];
            draw(
                r,
                BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area(),
            )?;
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().context("writing PNG header")?;
            w.write_image_data(&buf).context("writing PNG data")?;
            w.finish().context("finishing PNG")?;
            Ok(())
        }
        _ => bail!(
            "--plot {}: the file name must end in .png or .svg",
            path.display()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// main

#[derive(Serialize, Debug, Default)]
struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Info>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<VerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bench: Option<BenchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tune_copy: Option<TuneReport>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let opts = cli.opts;
    if let Some(p) = &opts.plot {
        // Fail before a long run, not after it.
        match p.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg") => {}
            _ => bail!(
                "--plot {}: the file name must end in .png or .svg",
                p.display()
            ),
        }
        register_font()?;
    }
    let ctx = GpuContext::with_options(ContextOptions {
        adapter: opts.adapter.clone(),
        max_binding_bytes: opts.max_binding_bytes,
        max_workgroups_per_dim: opts.max_workgroups_per_dim,
    })
    .context("opening the GPU")?;
    let mut report = Report {
        info: Some(info(&ctx)),
        ..Default::default()
    };
    let (do_verify, do_bench, quick, steps, fault) = match &cli.command {
        None => (true, true, true, 7, false),
        Some(Command::Info) => (false, false, false, 0, false),
        Some(Command::Verify {
            steps,
            inject_fault,
        }) => (true, false, false, *steps, *inject_fault),
        Some(Command::Bench) => (false, true, opts.quick, 0, false),
        Some(Command::TuneCopy) => (false, false, false, 0, false),
    };
    let human = !opts.json;
    if human {
        print_info(report.info.as_ref().expect("set above"));
    }
    if do_verify {
        let v = verify(&ctx, &opts, steps.max(1), fault)?;
        if human {
            print_verify(&v);
        }
        report.verify = Some(v);
    }
    if do_bench {
        let plan = BenchPlan::from_opts(&opts, quick || opts.quick)?;
        let b = bench(&ctx, &opts, &plan)?;
        if human {
            print_bench(&b);
        }
        if let Some(p) = &opts.plot {
            plot(&b, p)?;
            if human {
                println!("plot written to {}", p.display());
            }
        }
        report.bench = Some(b);
    }
    if matches!(cli.command, Some(Command::TuneCopy)) {
        let t = tune_copy(&ctx, &opts)?;
        if human {
            println!(
                "copy kernel work split, 5 steps per batch, {} batches (timer: {})",
                opts.iters.unwrap_or(10).max(1),
                t.timer.describe()
            );
            let rows: Vec<Vec<String>> = t
                .rows
                .iter()
                .map(|r| {
                    vec![
                        fmt_elems(r.elements),
                        r.workgroup_size.to_string(),
                        r.vec4_per_invocation.to_string(),
                        f3(r.ms.median),
                        f3(r.ms.p10),
                        f3(r.ms.p90),
                        f2(r.gb_per_s),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "elements",
                        "workgroup",
                        "vec4/inv",
                        "median ms",
                        "p10 ms",
                        "p90 ms",
                        "GB/s"
                    ],
                    0,
                    &rows
                )
            );
        }
        report.tune_copy = Some(t);
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(v) = &report.verify {
        if !v.passed {
            let fails = v.rows.iter().filter(|r| !r.pass).count();
            eprintln!("optbench: verify FAILED: {fails} buffer(s) out of tolerance");
            std::process::exit(1);
        }
    }
    Ok(())
}

//! `optbench`: adapter information, a check of every optimizer variant on the GPU against the
//! CPU reference, and a throughput benchmark against a streaming-copy roofline.
//!
//! ```text
//! optbench                 # info, verify, quick bench (what `cargo run --release` runs)
//! optbench info [--json]
//! optbench verify [--optimizers adam,sgd] [--json]
//! optbench bench [--sizes 1M,4M,16M] [--tensors 1,1000,10000] [--optimizers adam,sgd-momentum]
//!                [--iters 10] [--warmup 3] [--quick] [--json] [--plot bench.png|bench.svg]
//!                [--lookahead] [--amp]
//! optbench muon [--layers 12] [--width 768] [--iters 5] [--json]
//! optbench soak [--steps 100000] [--every 5000] [--sizes 1M] [--optimizers adam] [--json]
//! ```

mod bench;
mod font;
mod info;
mod muon;
mod plot;
mod soak;
mod tables;
mod tune;
mod util;
mod verify;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use wgpu_optim::bench::TimerChoice;
use wgpu_optim::{ContextOptions, GpuContext};

use crate::bench::{bench, print_bench, BenchPlan, BenchReport};
use crate::info::{info, print_info, Info};
use crate::plot::plot;
use crate::tune::{print_tune, tune, TuneRun};
use crate::verify::{print_verify, verify, VerifyReport};

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
        /// One row per optimizer and buffer (default: one line per optimizer variant, with its
        /// worst error over every buffer).
        #[arg(long)]
        verbose: bool,
    },
    /// Time one optimizer step per size, tensor count and optimizer, against a copy kernel.
    Bench,
    /// Time every candidate work split of the copy kernel, the norm reducers and each optimizer
    /// kernel on this adapter now (one --sizes value: the scratch tensor, default 1M on a CPU
    /// adapter, 16M on a GPU), and cache the fastest: what the library otherwise does on first
    /// use. --optimizers limits it to some presets.
    Tune,
    /// The batched matmul's GFLOP/s on Muon's Newton–Schulz stages, and the Muon step time
    /// against AdamW on the same tensors: the weight matrices of a transformer.
    Muon {
        /// Transformer blocks (each: q, k, v, o, fc1, fc2).
        #[arg(long, default_value_t = 12)]
        layers: usize,
        /// Model width (fc1 is 4·width × width). On lavapipe 12 × 768 takes minutes per
        /// step; try --layers 2 --width 256 there.
        #[arg(long, default_value_t = 768)]
        width: usize,
    },
    /// Many steps of one optimizer (`--optimizers`, default adam) on one tensor (`--sizes`,
    /// default 1M elements), sampling resident memory and live wgpu objects (exit status 1
    /// when objects accumulate or memory grows).
    Soak {
        /// Steps to run.
        #[arg(long, default_value_t = 100_000)]
        steps: u64,
        /// Sample every this many steps.
        #[arg(long, default_value_t = 5_000)]
        every: u64,
        /// Allowed resident-memory growth after the first sample, in MiB.
        #[arg(long, default_value_t = 8.0)]
        rss_slack: f64,
    },
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
    /// Optimizers, comma-separated, from the library's presets: sgd, sgd-momentum, sgd-nesterov, adam, adamw,
    /// adam-amsgrad, adamw-amsgrad, rmsprop, rmsprop-momentum, rmsprop-centered,
    /// rmsprop-centered-momentum, adagrad, lars, lamb. For verify, a prefix filter on the
    /// variant names.
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
    /// Work split of the elementwise kernels: auto (timed once per adapter and cached), cached
    /// (the cache or the default), off (the default 256x4), or a pinned shape such as 128x8.
    /// Overrides WGPU_OPTIM_TUNE.
    #[arg(long, global = true, value_parser = parse_tuning)]
    shape: Option<wgpu_optim::tune::Tuning>,
    /// Directory of the kernel-shape cache (default: WGPU_OPTIM_CACHE_DIR, else
    /// ~/.cache/wgpu-optim).
    #[arg(long, global = true)]
    tune_cache_dir: Option<std::path::PathBuf>,
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
    /// Storage of the model copy and gradients for bench cases: f32 (default), f16, bf16;
    /// several give one row each per case (f16 and bf16 rows are labelled `name [f16]`, with
    /// f32 master weights and state, and bytes per element counted for the storage types).
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_precision)]
    precision: Vec<wgpu_optim::Precision>,
    /// Also time every bench case under Lookahead with k = 1 (each step syncs) and report the
    /// sync's cost and the per-step cost at k = 5 against the plain step of the same run.
    #[arg(long, global = true)]
    lookahead: bool,
    /// Also time every bench case with the AMP guard attached (GradScaler's dynamic scale and
    /// the non-finite skip) and report its cost against the plain step of the same run.
    #[arg(long, global = true)]
    amp: bool,
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
fn parse_precision(s: &str) -> std::result::Result<wgpu_optim::Precision, String> {
    match s {
        "f32" => Ok(wgpu_optim::Precision::F32),
        "f16" => Ok(wgpu_optim::Precision::F16),
        "bf16" => Ok(wgpu_optim::Precision::BF16),
        _ => Err(format!("{s:?}: expected f32, f16 or bf16")),
    }
}

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

#[derive(Serialize, Debug, Default)]
struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Info>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<VerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bench: Option<BenchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tune: Option<TuneRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    muon: Option<muon::MuonReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soak: Option<soak::SoakReport>,
}

fn parse_tuning(s: &str) -> std::result::Result<wgpu_optim::tune::Tuning, String> {
    s.parse().map_err(|e: wgpu_optim::Error| e.to_string())
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
        font::register_font()?;
    }
    let ctx = GpuContext::with_options(ContextOptions {
        adapter: opts.adapter.clone(),
        max_binding_bytes: opts.max_binding_bytes,
        max_workgroups_per_dim: opts.max_workgroups_per_dim,
        tuning: opts.shape,
        tune_cache_dir: opts.tune_cache_dir.clone(),
    })
    .context("opening the GPU")?;
    let mut report = Report {
        info: Some(info(&ctx)),
        ..Default::default()
    };
    let (do_verify, do_bench, quick, steps, fault, verbose) = match &cli.command {
        None => (true, true, true, 7, false, false),
        Some(Command::Info) => (false, false, false, 0, false, false),
        Some(Command::Verify {
            steps,
            inject_fault,
            verbose,
        }) => (true, false, false, *steps, *inject_fault, *verbose),
        Some(Command::Bench) => (false, true, opts.quick, 0, false, false),
        Some(Command::Tune) | Some(Command::Muon { .. }) | Some(Command::Soak { .. }) => {
            (false, false, false, 0, false, false)
        }
    };
    let human = !opts.json;
    if human {
        print_info(report.info.as_ref().expect("set above"));
    }
    if do_verify {
        let v = verify(&ctx, &opts, steps.max(1), fault)?;
        if human {
            print_verify(&v, verbose);
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
    if matches!(cli.command, Some(Command::Tune)) {
        let t = tune(&ctx, &opts)?;
        if human {
            print_tune(&t);
        }
        report.tune = Some(t);
    }
    if let Some(Command::Muon { layers, width }) = cli.command {
        let m = muon::muon_bench(&ctx, &opts, layers, width)?;
        if human {
            muon::print_muon(&m);
        }
        report.muon = Some(m);
    }
    if let Some(Command::Soak {
        steps,
        every,
        rss_slack,
    }) = cli.command
    {
        let r = soak::soak(&ctx, &opts, steps.max(2), every.max(1), rss_slack)?;
        if human {
            soak::print_soak(&r);
        }
        report.soak = Some(r);
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(s) = &report.soak {
        if !s.passed {
            eprintln!("optbench: soak FAILED");
            std::process::exit(1);
        }
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

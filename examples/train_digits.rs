//! A real training loop on the GPU: a 64-128-10 MLP (ReLU, softmax cross-entropy) on the 8x8
//! handwritten digits (1,797 real images, 10 classes; examples/data/README.md), with a fixed
//! seeded split of 1,437 training and 360 test images.
//!
//! Forward pass, loss, backward pass (examples/train_digits/mlp.wgsl) and the optimizer step
//! are recorded into one command encoder per step and submitted once; the gradients are written
//! straight into the optimizer's arena. Nothing is read back per step except, every few steps,
//! the loss/accuracy accumulators the progress bar shows (and at the end of each epoch, the
//! test set's).
//!
//! Run: `cargo run --release --example train_digits` (Adam; `--optimizer sgd-momentum`,
//! `--compare` for every preset and a picture, `--quick` for the CI smoke test, `--help`).

// Shared with tests/mlp_gradients.rs, which uses the CPU reference and host copies too.
#[allow(dead_code)]
#[path = "train_digits/mlp.rs"]
mod mlp;
// The font loader optbench's --plot uses.
#[path = "../optbench/src/font.rs"]
mod font;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    CosineAnnealingLR, GpuContext, LrSchedule, MultiStepLR, Optimizer, OptimizerConfig, ParamArena,
};

use mlp::{Dataset, Mlp, Params};

/// Test images per class of the fixed split: 360 test images, the other 1,437 train.
const TEST_PER_CLASS: usize = 36;
/// Seed of the train/test split: the same split whatever `--seed`.
const SPLIT_SEED: u64 = 20_240_601;
/// Epochs of the default and `--compare` runs.
const EPOCHS: usize = 30;
/// Epochs of each `--quick` run.
const QUICK_EPOCHS: usize = 5;
/// `--quick` fails below this test accuracy (chance is 10%).
const QUICK_THRESHOLD: f64 = 0.85;
/// The progress bar's loss and accuracy are read back every this many steps.
const SHOW_EVERY: usize = 5;

/// Learning rates tuned for this model, data and batch size of 64 (30 epochs, constant lr);
/// presets not listed keep the library's lr.
const TUNED_LR: &[(&str, f64)] = &[
    ("sgd", 0.2),
    ("sgd-momentum", 0.1),
    ("sgd-nesterov", 0.1),
    ("adam", 3e-3),
    ("adamw", 3e-3),
    ("adam-amsgrad", 3e-3),
    ("adamw-amsgrad", 3e-3),
    ("rmsprop", 1e-3),
    ("rmsprop-momentum", 3e-4),
    ("rmsprop-centered", 1e-3),
    ("rmsprop-centered-momentum", 3e-4),
    ("adagrad", 0.1),
    ("lars", 1.0),
    ("lamb", 1e-2),
    ("nadam", 2e-3),
    ("nadamw", 2e-3),
    ("radam", 3e-3),
    ("radamw", 3e-3),
    ("adamax", 5e-3),
    ("adadelta", 1.0),
    ("asgd", 0.2),
    // Rprop is a full-batch method; on mini-batches of 64 it stays near 93%.
    ("rprop", 1e-3),
    ("lion", 5e-4),
    ("adopt", 1e-3),
    ("schedule-free-adamw", 2.5e-3),
    ("schedule-free-sgd", 1.0),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Schedule {
    /// The optimizer's lr throughout.
    Constant,
    /// lr x0.1 after half the epochs and x0.01 after three quarters (MultiStepLR).
    Step,
    /// Cosine annealing from lr to 0 over all steps (CosineAnnealingLR, per step).
    Cosine,
}

impl Schedule {
    /// The library's schedule for this choice over `epochs` epochs of `steps_per_epoch` steps,
    /// and whether it steps per epoch (else per optimizer step); `None`: constant lr.
    fn build(
        self,
        opt: &mut Optimizer,
        epochs: usize,
        steps_per_epoch: usize,
    ) -> Result<Option<(Box<dyn LrSchedule>, bool)>> {
        Ok(match self {
            Schedule::Constant => None,
            Schedule::Step => {
                let milestones = [epochs.div_ceil(2) as u64, (3 * epochs).div_ceil(4) as u64];
                Some((Box::new(MultiStepLR::new(opt, &milestones, 0.1)?), true))
            }
            Schedule::Cosine => {
                let total = (epochs * steps_per_epoch) as u64;
                Some((Box::new(CosineAnnealingLR::new(opt, total, 0.0)?), false))
            }
        })
    }
}

#[derive(Debug, Parser)]
#[command(
    about = "Train a 64-128-10 MLP on the 8x8 handwritten digits entirely on the GPU \
             (forward, loss, backward and a wgpu-optim optimizer step in one submission per step)"
)]
struct Args {
    /// Optimizer: any name of OptimizerConfig::presets() (adam, adamw, sgd-momentum, lars,
    /// lamb, rmsprop, adagrad, ...).
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate (default: the preset's tuned lr, see below).
    #[arg(long)]
    lr: Option<f64>,
    /// Epochs [default: 30; 5 with --quick].
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size (1..=256).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the weight initialisation and of the batch order (the train/test split is fixed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = Schedule::Constant)]
    lr_schedule: Schedule,
    /// CI smoke test: a few epochs of Adam, then of SGD with momentum; fails unless each
    /// reaches 85% test accuracy.
    #[arg(long, conflicts_with = "compare")]
    quick: bool,
    /// Train with every preset optimizer (same seed, epochs and schedule), print a summary
    /// table and draw loss and test-accuracy curves to --out.
    #[arg(long)]
    compare: bool,
    /// The --compare picture (PNG).
    #[arg(long, default_value = "docs/train_digits.png")]
    out: PathBuf,
}

/// The text after `--help`'s options: the tuned lrs (from [`TUNED_LR`]) and the schedule note.
fn after_help() -> String {
    let lrs: Vec<String> = TUNED_LR.iter().map(|(n, lr)| format!("{n} {lr}")).collect();
    format!(
        "Learning rates: unless --lr is given, each preset runs with the lr tuned for this model \
         and batch size 64 (30 epochs, constant lr): {}. Biases (arena group 1) get no weight \
         decay (and so, as in timm, no LARS/LAMB trust ratio).\n\n\
         --lr-schedule uses the library's schedules (wgpu_optim::schedule): step is \
         MultiStepLR(milestones at 1/2 and 3/4 of the epochs, gamma 0.1) stepped per epoch, \
         cosine is CosineAnnealingLR(T_max = all steps) stepped per optimizer step.",
        lrs.join(", ")
    )
}

/// One training run's settings.
#[derive(Debug, Clone)]
struct RunSpec {
    name: String,
    config: OptimizerConfig,
    epochs: usize,
    batch: usize,
    seed: u64,
    schedule: Schedule,
}

#[derive(Debug, Clone, Copy)]
struct EpochStats {
    /// Mean training loss over the epoch's batches (weights changing as it goes).
    loss: f64,
    train_acc: f64,
    test_loss: f64,
    test_acc: f64,
    ms_per_step: f64,
}

#[derive(Debug, Clone)]
struct RunResult {
    name: String,
    lr: f64,
    epochs: Vec<EpochStats>,
    state_bytes: u64,
}

impl RunResult {
    fn last(&self) -> EpochStats {
        *self.epochs.last().expect("at least one epoch")
    }

    /// Fastest epoch's training milliseconds per step (lavapipe on a small VM switches
    /// between speeds from epoch to epoch, whatever the optimizer).
    fn best_ms_per_step(&self) -> f64 {
        self.epochs
            .iter()
            .map(|e| e.ms_per_step)
            .fold(f64::INFINITY, f64::min)
    }

    /// Median over epochs of the training milliseconds per step.
    fn ms_per_step(&self) -> f64 {
        let mut v: Vec<f64> = self.epochs.iter().map(|e| e.ms_per_step).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

/// The preset `name` with its tuned lr, or `lr` if given.
fn preset(name: &str, lr: Option<f64>) -> Result<OptimizerConfig> {
    let config = OptimizerConfig::preset(name).ok_or_else(|| {
        let names: Vec<&str> = OptimizerConfig::presets().iter().map(|p| p.name).collect();
        anyhow!("unknown optimizer {name:?}; presets: {}", names.join(", "))
    })?;
    let tuned = TUNED_LR.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    Ok(match lr.or(tuned) {
        Some(lr) => config.with_lr(lr),
        None => config,
    })
}

/// `config` without weight decay (for the biases' group).
fn without_decay(config: &OptimizerConfig) -> OptimizerConfig {
    let mut c = config.clone();
    #[allow(unreachable_patterns)]
    match &mut c {
        OptimizerConfig::Sgd(x) => x.weight_decay = 0.0,
        OptimizerConfig::Adam(x) => x.weight_decay = 0.0,
        OptimizerConfig::Rmsprop(x) => x.weight_decay = 0.0,
        OptimizerConfig::Adagrad(x) => x.weight_decay = 0.0,
        OptimizerConfig::Lars(x) => x.weight_decay = 0.0,
        OptimizerConfig::Lamb(x) => x.weight_decay = 0.0,
        _ => {}
    }
    c
}

struct Split {
    train: Vec<u32>,
    test: Vec<u32>,
}

fn bar(total: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>14} [{bar:30.cyan/blue}] {pos:>5}/{len} steps  {msg}  ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// Trains one model from scratch; prints the per-epoch table when `table` is set.
fn train(
    ctx: &GpuContext,
    data: &Dataset,
    split: &Split,
    spec: &RunSpec,
    table: bool,
) -> Result<RunResult> {
    let arena = ParamArena::new(ctx, &mlp::specs())?;
    Params::init(spec.seed).write(&arena)?;
    let model = Mlp::new(ctx, &arena, data, &split.train, &split.test, spec.batch)?;
    // Arena group 0 (weights) gets the configuration, group 1 (biases) the same without decay.
    let mut opt = Optimizer::new(ctx, &arena, spec.config.clone())?;
    opt.set_group_config(1, without_decay(&spec.config))?;

    let steps_per_epoch = model.train_batches();
    let total = spec.epochs * steps_per_epoch;
    let mut schedule = spec
        .schedule
        .build(&mut opt, spec.epochs, steps_per_epoch)?;
    let mut rng = fastrand::Rng::with_seed(spec.seed ^ 0x005e_ed0f_0bde);
    let mut order = split.train.clone();
    let pb = bar(total as u64, &spec.name);
    if table {
        pb.suspend(|| {
            println!(
                "{:>5}  {:>8}  {:>9}  {:>9}  {:>8}  {:>7}",
                "epoch", "loss", "train acc", "test loss", "test acc", "ms/step"
            )
        });
    }
    let device = ctx.device();
    let mut epochs = Vec::with_capacity(spec.epochs);
    for epoch in 0..spec.epochs {
        rng.shuffle(&mut order);
        model.set_train_order(&order)?;
        let t0 = Instant::now();
        let mut train_acc = mlp::Acc::default();
        for k in 0..steps_per_epoch {
            let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train step"),
            });
            if k == 0 {
                model.encode_reset(&mut enc);
            }
            model.encode_train_batch(&mut enc, k);
            opt.encode_step(&mut enc, &arena)?;
            // The step's lr is in the table written above; the schedule sets the next one's.
            if let Some((s, false)) = &mut schedule {
                s.step(&mut opt)?;
            }
            let show = (k + 1) % SHOW_EVERY == 0 || k + 1 == steps_per_epoch;
            if show {
                model.encode_snapshot(&mut enc);
            }
            ctx.queue().submit([enc.finish()]);
            if show {
                train_acc = model.read_snapshot()?[mlp::TRAIN_SLOT];
                pb.set_message(format!(
                    "epoch {:>2}  loss {:.4}  train acc {:5.1}%",
                    epoch + 1,
                    train_acc.loss(),
                    100.0 * train_acc.accuracy()
                ));
            }
            pb.inc(1);
        }
        if let Some((s, true)) = &mut schedule {
            s.step(&mut opt)?;
        }
        // The last step's snapshot waited for the GPU: this is the epoch's training time.
        let ms_per_step = t0.elapsed().as_secs_f64() * 1e3 / steps_per_epoch as f64;
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("eval"),
        });
        model.encode_eval(&mut enc);
        model.encode_snapshot(&mut enc);
        ctx.queue().submit([enc.finish()]);
        let test = model.read_snapshot()?[mlp::TEST_SLOT];
        ensure!(
            test.count as usize == split.test.len(),
            "evaluated {} test images, want {}",
            test.count,
            split.test.len()
        );
        let e = EpochStats {
            loss: train_acc.loss(),
            train_acc: train_acc.accuracy(),
            test_loss: test.loss(),
            test_acc: test.accuracy(),
            ms_per_step,
        };
        if table {
            pb.suspend(|| {
                println!(
                    "{:>5}  {:>8.4}  {:>8.1}%  {:>9.4}  {:>7.1}%  {:>7.2}",
                    epoch + 1,
                    e.loss,
                    100.0 * e.train_acc,
                    e.test_loss,
                    100.0 * e.test_acc,
                    e.ms_per_step
                )
            });
        }
        epochs.push(e);
    }
    pb.finish_and_clear();
    Ok(RunResult {
        name: spec.name.clone(),
        lr: opt.base_lr(0)?,
        epochs,
        state_bytes: opt.state_bytes(),
    })
}

fn main() -> Result<()> {
    let matches = Args::command().after_help(after_help()).get_matches();
    let args = Args::from_arg_matches(&matches)?;
    ensure!(
        (1..=mlp::MAX_BATCH).contains(&args.batch),
        "--batch {} is not in 1..={}",
        args.batch,
        mlp::MAX_BATCH
    );
    if let Some(lr) = args.lr {
        ensure!(lr > 0.0 && lr.is_finite(), "--lr {lr} must be positive");
    }
    let epochs = args
        .epochs
        .unwrap_or(if args.quick { QUICK_EPOCHS } else { EPOCHS });
    ensure!(epochs > 0, "--epochs must be at least 1");
    preset(&args.optimizer, args.lr)?; // an unknown name fails before any work

    let data = Dataset::digits()?;
    let all = data.class_counts(0..data.len() as u32);
    ensure!(
        data.len() == 1797 && all.iter().all(|&c| (150..=210).contains(&c)),
        "unexpected digits data: {} images, per class {all:?}",
        data.len()
    );
    let (train_idx, test_idx) = mlp::split(&data, TEST_PER_CLASS, SPLIT_SEED);
    println!(
        "digits: {} images of 8x8 pixels (0..16), per class {:?}; train {} / test {} \
         (test per class {:?})",
        data.len(),
        all,
        train_idx.len(),
        test_idx.len(),
        data.class_counts(test_idx.iter().copied())
    );
    let split = Split {
        train: train_idx,
        test: test_idx,
    };

    let ctx = GpuContext::new().context("no GPU adapter (see README: scripts/setup-vulkan.sh)")?;
    let info = ctx.adapter_info();
    println!("adapter: {} ({:?})", info.name, info.backend);

    let spec = |name: &str, lr: Option<f64>| -> Result<RunSpec> {
        Ok(RunSpec {
            name: name.to_string(),
            config: preset(name, lr)?,
            epochs,
            batch: args.batch,
            seed: args.seed,
            schedule: args.lr_schedule,
        })
    };

    if args.quick {
        let mut failed = Vec::new();
        for name in ["adam", "sgd-momentum"] {
            let r = train(&ctx, &data, &split, &spec(name, args.lr)?, false)?;
            let acc = r.last().test_acc;
            println!(
                "{name:<14} {epochs} epochs, lr {}: test accuracy: {:.1}% (required: {:.0}%), \
                 {:.2} ms/step",
                r.lr,
                100.0 * acc,
                100.0 * QUICK_THRESHOLD,
                r.ms_per_step()
            );
            if acc.is_nan() || acc < QUICK_THRESHOLD {
                failed.push(name);
            }
        }
        if !failed.is_empty() {
            bail!(
                "below {:.0}% test accuracy: {}",
                100.0 * QUICK_THRESHOLD,
                failed.join(", ")
            );
        }
        println!("quick: ok");
        return Ok(());
    }

    if args.compare {
        let presets = OptimizerConfig::presets();
        let mut results = Vec::with_capacity(presets.len());
        println!(
            "training with each of {} presets: {epochs} epochs, batch {}, seed {}, {:?} lr",
            presets.len(),
            args.batch,
            args.seed,
            args.lr_schedule
        );
        for p in &presets {
            let r = train(&ctx, &data, &split, &spec(p.name, args.lr)?, false)?;
            let e = r.last();
            println!(
                "{:<26} test accuracy {:5.1}%  loss {:.4}  {:.2} ms/step",
                r.name,
                100.0 * e.test_acc,
                e.loss,
                r.ms_per_step()
            );
            results.push(r);
        }
        println!();
        println!(
            "| optimizer | lr | final test acc | best test acc | final train loss | ms/step (median) | ms/step (fastest epoch) | state bytes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &results {
            let e = r.last();
            let best = r.epochs.iter().map(|e| e.test_acc).fold(0.0, f64::max);
            println!(
                "| {} | {} | {:.1}% | {:.1}% | {:.4} | {:.2} | {:.2} | {} |",
                r.name,
                r.lr,
                100.0 * e.test_acc,
                100.0 * best,
                e.loss,
                r.ms_per_step(),
                r.best_ms_per_step(),
                r.state_bytes
            );
        }
        plot(&results, &args.out)?;
        println!("\nwrote {}", args.out.display());
        return Ok(());
    }

    let s = spec(&args.optimizer, args.lr)?;
    println!(
        "{}: {}, {epochs} epochs, batch {}, seed {}, {:?} lr",
        s.name,
        s.config.describe(),
        args.batch,
        args.seed,
        args.lr_schedule
    );
    let r = train(&ctx, &data, &split, &s, true)?;
    let e = r.last();
    println!(
        "{}: test accuracy: {:.1}%, {:.2} ms/step (median over epochs), optimizer state {} bytes",
        r.name,
        100.0 * e.test_acc,
        r.ms_per_step(),
        r.state_bytes
    );
    Ok(())
}

/// Colour of an optimizer family, and a dash pattern per preset within it (dash, gap in px;
/// a gap of 0 is a solid line).
fn line_style(results: &[RunResult], i: usize) -> (plotters::style::RGBColor, (u32, u32)) {
    use plotters::style::RGBColor;
    let family = |name: &str| {
        OptimizerConfig::preset(name)
            .map(|c| c.family())
            .unwrap_or("")
    };
    let fam = family(&results[i].name);
    // One colour per family, in the order the library's table lists them: matplotlib's tab20,
    // its ten dark colours first, then the ten light ones.
    const TAB20: [(u8, u8, u8); 20] = [
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
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (199, 199, 199),
        (219, 219, 141),
        (158, 218, 229),
    ];
    let mut families: Vec<&'static str> = Vec::new();
    for p in OptimizerConfig::presets() {
        if !families.contains(&p.config.family()) {
            families.push(p.config.family());
        }
    }
    let k = families.iter().position(|&f| f == fam).unwrap_or(0);
    let (r, g, b) = TAB20[k % TAB20.len()];
    let color = RGBColor(r, g, b);
    let nth = results[..i]
        .iter()
        .filter(|r| family(&r.name) == fam)
        .count();
    let dash = [(1000, 0), (9, 5), (3, 4), (14, 4)][nth % 4];
    (color, dash)
}

/// The pieces of the polyline `pts` at or above `floor`, each cut where it crosses it.
fn above(pts: &[(f64, f64)], floor: f64) -> Vec<Vec<(f64, f64)>> {
    let cross = |a: (f64, f64), b: (f64, f64)| {
        let t = (floor - a.1) / (b.1 - a.1);
        (a.0 + t * (b.0 - a.0), floor)
    };
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    for (k, &p) in pts.iter().enumerate() {
        let prev = k.checked_sub(1).map(|j| pts[j]);
        if p.1 >= floor {
            if let Some(q) = prev.filter(|q| q.1 < floor) {
                cur.push(cross(q, p));
            }
            cur.push(p);
        } else if let Some(q) = prev.filter(|q| q.1 >= floor) {
            cur.push(cross(q, p));
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Two panels: training loss and test accuracy against epoch, one line per optimizer.
fn plot(results: &[RunResult], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    font::register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    const W: u32 = 1280;
    const H: u32 = 560;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(results, root).map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    enc.write_header()?.write_image_data(&buf)?;
    Ok(())
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    results: &[RunResult],
    root: plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), plotters::prelude::DrawingAreaErrorKind<DB::ErrorType>> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;
    /// Bottom of the accuracy axis (lower values, early epochs only, are cut off).
    const ACC_FLOOR: f64 = 80.0;
    root.fill(&WHITE)?;
    let epochs = results.iter().map(|r| r.epochs.len()).max().unwrap_or(1);
    let title = format!(
        "64-128-10 MLP on the 8x8 digits (1437 train / 360 test images): every wgpu-optim \
         preset, {epochs} epochs, trained on the GPU"
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(640);
    let epochs = epochs as f64;
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let (lo, hi) = results
        .iter()
        .flat_map(|r| r.epochs.iter().map(|e| e.loss))
        .filter(|&v| finite(v))
        .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo < hi {
        (lo * 0.8, hi * 1.25)
    } else {
        (1e-3, 10.0)
    };
    let series = |r: &RunResult, f: &dyn Fn(&EpochStats) -> f64| -> Vec<(f64, f64)> {
        r.epochs
            .iter()
            .enumerate()
            .map(|(k, e)| ((k + 1) as f64, f(e)))
            .filter(|p| p.1.is_finite())
            .collect()
    };

    let mut loss = ChartBuilder::on(&left)
        .caption("training loss (mean over each epoch)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(1.0..epochs, (lo..hi).log_scale())?;
    loss.configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("epoch")
        .y_desc("cross-entropy (log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    let mut acc = ChartBuilder::on(&right)
        .caption("test accuracy", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..epochs, ACC_FLOOR..100.0)?;
    acc.configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("epoch")
        .y_desc("%")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        let (color, (dash, gap)) = line_style(results, i);
        let style = color.stroke_width(2);
        let pts: Vec<(f64, f64)> = series(r, &|e| e.loss)
            .into_iter()
            .filter(|p| finite(p.1))
            .collect();
        loss.draw_series(DashedLineSeries::new(pts, dash, gap, style))?;
        // Parts below the axis are left out (cut where they cross it).
        let mut parts = above(&series(r, &|e| 100.0 * e.test_acc), ACC_FLOOR).into_iter();
        let first = parts.next().unwrap_or_default();
        acc.draw_series(DashedLineSeries::new(first, dash, gap, style))?
            .label(r.name.clone())
            .legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], dash, gap, style)
            });
        for part in parts {
            acc.draw_series(DashedLineSeries::new(part, dash, gap, style))?;
        }
    }
    acc.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()
}

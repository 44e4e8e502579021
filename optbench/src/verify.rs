//! `optbench verify`: every optimizer variant, with and without gradient clipping, and the
//! norms, on the GPU against the CPU reference.

use anyhow::{bail, Result};
use serde::Serialize;
use wgpu_optim::norm::{cpu_clip_grad_norm, cpu_norms};
use wgpu_optim::precision::to_bits16;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    CpuOptimizer, GpuContext, GradClipper, NormReducer, NormType, Optimizer, OptimizerConfig,
    ParamArena, ParamGroups, Precision, PrecisionOptions, Select, TensorSpec,
};

use crate::tables::table;
use crate::util::{progress, randn};
use crate::Opts;

/// PyTorch's fp32 `assert_close` tolerance: `|got - want| <= ATOL + RTOL * |want|`.
const ATOL: f64 = 1e-5;
/// See [`ATOL`].
const RTOL: f64 = 1.3e-6;

/// Every variant `verify` checks: the library's table of flag combinations (each flag of each
/// optimizer at least once), as (label, one configuration per arena group). Group 1 (the odd
/// tensors) runs at half the lr.
fn verify_variants() -> Vec<(String, Vec<OptimizerConfig>)> {
    let mut out: Vec<(String, Vec<OptimizerConfig>)> = OptimizerConfig::variants()
        .into_iter()
        .map(|c| {
            let half = c.clone().with_lr(c.lr() * 0.5);
            (c.describe(), vec![c, half])
        })
        .collect();
    // Two segments in one optimizer: LARS on group 0 and AdamW on group 1, one step each.
    let lars = OptimizerConfig::preset("lars").expect("lars preset");
    let adamw = OptimizerConfig::preset("adamw").expect("adamw preset");
    out.push(("lars + adamw (two segments)".into(), vec![lars, adamw]));
    out
}

/// Tensor lengths `verify` uses: odd sizes, a single element, an empty tensor.
const VERIFY_LENS: [usize; 8] = [1, 257, 100_003, 0, 4_099, 64, 1_000, 3];

fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct VerifyRow {
    optimizer: String,
    buffer: String,
    elements: usize,
    max_abs_err: f64,
    max_rel_err: f64,
    pub(crate) pass: bool,
}

#[derive(Serialize, Debug)]
pub(crate) struct VerifyReport {
    atol: f64,
    rtol: f64,
    steps: usize,
    lengths: Vec<usize>,
    fault_injected: bool,
    /// FNV-1a of every compared GPU value's bits, as hex (see `DIGEST`).
    gpu_digest: String,
    /// The same over the CPU reference's values.
    cpu_digest: String,
    pub(crate) rows: Vec<VerifyRow>,
    pub(crate) passed: bool,
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
    arena.write_all_params(&data)?;
    let mut rows = Vec::new();
    for (norm_type, name) in [(NormType::L2, "l2"), (NormType::Inf, "inf")] {
        let r = NormReducer::new(ctx, &arena, wgpu_optim::norm::NormSource::Params, norm_type)?;
        let (per, total) = r.compute()?;
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

thread_local! {
    /// FNV-1a over the bits of every GPU (`.0`) and CPU-reference (`.1`) value compared, in
    /// comparison order: `optbench verify` prints it so that a change meant to leave every
    /// kernel's output (and the CPU twin's) bit-identical can be checked by comparing digests
    /// before and after (same seed, steps and adapter).
    static DIGEST: std::cell::Cell<(u64, u64)> =
        const { std::cell::Cell::new((0xcbf2_9ce4_8422_2325, 0xcbf2_9ce4_8422_2325)) };
}

fn fnv(mut h: u64, bits: u64) -> u64 {
    for b in bits.to_le_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn digest(got: impl Iterator<Item = u64>, want: impl Iterator<Item = u64>) {
    DIGEST.with(|d| {
        let (g, w) = d.get();
        d.set((got.fold(g, fnv), want.fold(w, fnv)));
    });
}

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
        digest([got.to_bits()].into_iter(), [want.to_bits()].into_iter());
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
        digest(
            got.iter().map(|x| x.to_bits() as u64),
            want.iter().map(|x| x.to_bits() as u64),
        );
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

/// A `verify` case: label, one configuration per arena group, and the (max_norm, norm) of
/// attached clipping.
type VerifyVariant = (String, Vec<OptimizerConfig>, Option<(f64, NormType)>);

/// Variants checked with global-norm clipping attached: (label, configs, max_norm, norm).
fn clip_variants() -> Vec<(String, Vec<OptimizerConfig>, f64, NormType)> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for (label, cfgs) in verify_variants() {
        let clip = match cfgs[0].name() {
            "adam" | "lamb" | "lars" => (1.0, NormType::L2),
            "sgd-momentum" => (0.1, NormType::Inf),
            _ => continue,
        };
        // The first variant of each of these, and the two-segment one.
        if seen.contains(&cfgs[0].name()) && cfgs[0].family() == cfgs[1].family() {
            continue;
        }
        seen.push(cfgs[0].name());
        let kind = if clip.1 == NormType::L2 { "l2" } else { "inf" };
        out.push((
            format!("{label} + clip_grad_norm({}, {kind})", clip.0),
            cfgs,
            clip.0,
            clip.1,
        ));
    }
    out
}

pub(crate) fn verify(
    ctx: &GpuContext,
    opts: &Opts,
    steps: usize,
    inject_fault: bool,
) -> Result<VerifyReport> {
    let variants: Vec<VerifyVariant> = verify_variants()
        .into_iter()
        .map(|(l, c)| (l, c, None))
        .chain(
            clip_variants()
                .into_iter()
                .map(|(l, c, m, n)| (l, c, Some((m, n)))),
        )
        .filter(|(label, cfgs, _)| {
            opts.optimizers.is_empty()
                || opts
                    .optimizers
                    .iter()
                    .any(|f| label.starts_with(f.as_str()) || cfgs.iter().any(|c| c.name() == f))
        })
        .collect();
    if variants.is_empty()
        && !opts
            .optimizers
            .iter()
            .any(|o| o == "lookahead" || o == "mixed")
    {
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
    for (vi, (label, cfgs, clip)) in variants.iter().enumerate() {
        pb.set_message(label.clone());
        let arena = ParamArena::new(ctx, &specs)?;
        let groups = cfgs
            .iter()
            .enumerate()
            .fold(ParamGroups::new(), |g, (i, c)| {
                g.group(Select::ArenaGroup(i), c.clone())
            });
        let mut gpu = Optimizer::with_groups(ctx, &arena, groups.clone())?;
        let mut cpu = CpuOptimizer::with_groups(&specs, groups)?;
        let clipper = match clip {
            Some((max_norm, norm_type)) => {
                let c = std::sync::Arc::new(GradClipper::new(ctx, &arena, *max_norm, *norm_type)?);
                gpu.set_grad_clip(Some(c.clone()))?;
                Some(c)
            }
            None => None,
        };
        let mut norm_cmp = Cmp::default();
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params)?;
        let names = gpu.state_names();
        let mut cmps: Vec<Cmp> = (0..=names.len()).map(|_| Cmp::default()).collect();
        for k in 0..steps {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            arena.write_all_grads(&grads)?;
            for i in 0..lens.len() {
                let fz = frozen(k, i);
                gpu.set_frozen(&format!("t{i}"), fz)?;
                cpu.set_frozen(&format!("t{i}"), fz)?;
            }
            if k == 4 {
                // What a scheduler does between steps: every group to 0.3 of its base lr.
                gpu.set_lr_factor(0.3)?;
                cpu.set_lr_factor(0.3)?;
            }
            gpu.step(&arena)?;
            let mut grads = grads;
            if let (Some(c), Some((max_norm, norm_type))) = (&clipper, clip) {
                // clip-then-step on the CPU, f64 norms, over the tensors that have a gradient
                // this step (clip_grad_norm_ never sees frozen ones); the GPU fuses the clip
                // into the step.
                let live: Vec<usize> = (0..lens.len()).filter(|&i| !frozen(k, i)).collect();
                let mut live_grads: Vec<Vec<f32>> =
                    live.iter().map(|&i| grads[i].clone()).collect();
                let want = cpu_clip_grad_norm(&mut live_grads, *max_norm, *norm_type)?;
                for (g, &i) in live_grads.into_iter().zip(&live) {
                    grads[i] = g;
                }
                let got = c.read_total_norm()? as f64;
                norm_cmp.add_rel(got, want);
            }
            cpu.step(&mut params, &grads)?;
            let mut got = arena.read_all_params()?;
            if inject_fault && vi == 0 && k + 1 == steps {
                got[1][100] += 1.0;
            }
            for (i, g) in got.iter().enumerate() {
                cmps[0].add(g, &params[i]);
            }
            for (s, name) in names.iter().enumerate() {
                let img = gpu.read_state_image(name)?;
                let got = arena.layout().unpack(&img)?;
                for (i, g) in got.iter().enumerate() {
                    let t = format!("t{i}");
                    if cpu.tensor_state_names(&t)?.contains(name) {
                        cmps[s + 1].add(g, &cpu.read_state(name, &t)?);
                    }
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
    if opts.optimizers.is_empty() || opts.optimizers.iter().any(|o| o == "lookahead") {
        rows.extend(verify_lookahead(ctx, steps, &mut rng)?);
    }
    if opts.optimizers.is_empty() || opts.optimizers.iter().any(|o| o == "mixed") {
        rows.extend(verify_mixed(ctx, steps, &mut rng)?);
    }
    let passed = rows.iter().all(|r| r.pass);
    Ok(VerifyReport {
        atol: ATOL,
        rtol: RTOL,
        steps,
        lengths: lens.to_vec(),
        fault_injected: inject_fault,
        gpu_digest: format!("{:016x}", DIGEST.with(|d| d.get().0)),
        cpu_digest: format!("{:016x}", DIGEST.with(|d| d.get().1)),
        rows,
        passed,
    })
}

pub(crate) fn print_verify(r: &VerifyReport, verbose: bool) {
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
    // By default one line per optimizer variant: its worst errors over every buffer, the buffer
    // they came from, and FAIL if any buffer failed (`--verbose` lists every buffer).
    let mut rows: Vec<Vec<String>> = Vec::new();
    if verbose {
        rows.extend(r.rows.iter().map(|x| {
            vec![
                x.optimizer.clone(),
                x.buffer.clone(),
                e(x.max_abs_err),
                e(x.max_rel_err),
                if x.pass { "PASS" } else { "FAIL" }.into(),
            ]
        }));
    } else {
        let mut i = 0;
        while i < r.rows.len() {
            let name = &r.rows[i].optimizer;
            let n = r.rows[i..]
                .iter()
                .take_while(|x| &x.optimizer == name)
                .count();
            let group = &r.rows[i..i + n];
            let worst = group
                .iter()
                .max_by(|a, b| a.max_rel_err.total_cmp(&b.max_rel_err))
                .expect("non-empty");
            let abs = group.iter().map(|x| x.max_abs_err).fold(0.0, f64::max);
            let failed: Vec<&str> = group
                .iter()
                .filter(|x| !x.pass)
                .map(|x| x.buffer.as_str())
                .collect();
            rows.push(vec![
                name.clone(),
                if failed.is_empty() {
                    format!("{n} buffers (worst: {})", worst.buffer)
                } else {
                    format!("{n} buffers, FAIL: {}", failed.join(", "))
                },
                e(abs),
                e(worst.max_rel_err),
                if failed.is_empty() { "PASS" } else { "FAIL" }.into(),
            ]);
            i += n;
        }
    }
    print!(
        "{}",
        table(
            &[
                "optimizer",
                if verbose { "state buffer" } else { "buffers" },
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
    println!(
        "digest of every compared value's bits: gpu {}, cpu {} (equal digests from two builds: \
         bit-identical outputs)",
        r.gpu_digest, r.cpu_digest
    );
    println!();
}

/// Lookahead (k = 3, so a few steps cross syncs) around SGD with momentum (paper, with the
/// inner-state reset) and AdamW (timm), on the GPU against `CpuLookahead`: params, slow
/// weights and the inner state, frozen tensors included.
fn verify_lookahead(
    ctx: &GpuContext,
    steps: usize,
    rng: &mut fastrand::Rng,
) -> Result<Vec<VerifyRow>> {
    use wgpu_optim::{CpuLookahead, Lookahead, LookaheadConfig};
    let lens = VERIFY_LENS;
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let cases = [
        (
            OptimizerConfig::preset("sgd-momentum").expect("sgd-momentum preset"),
            LookaheadConfig::paper().with_k(3).with_reset_state(true),
        ),
        (
            OptimizerConfig::preset("adamw").expect("adamw preset"),
            LookaheadConfig::timm().with_k(3),
        ),
    ];
    let mut rows = Vec::new();
    for (inner, cfg) in cases {
        let label = format!(
            "lookahead({:?}, k={}) {}",
            cfg.variant,
            cfg.k,
            inner.describe()
        );
        let arena = ParamArena::new(ctx, &specs)?;
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(rng, n, 1.0)).collect();
        arena.write_all_params(&params)?;
        let mut gpu = Lookahead::new(
            ctx,
            &arena,
            Optimizer::new(ctx, &arena, inner.clone())?,
            cfg,
        )?;
        let mut cpu = CpuLookahead::new(CpuOptimizer::new(inner, &specs)?, cfg, &params)?;
        let names = gpu.inner().state_names();
        let mut cmps: Vec<Cmp> = (0..names.len() + 2).map(|_| Cmp::default()).collect();
        for k in 0..steps.max(7) {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(rng, n, 0.5)).collect();
            arena.write_all_grads(&grads)?;
            for i in 0..lens.len() {
                let fz = frozen(k, i);
                gpu.inner_mut().set_frozen(&format!("t{i}"), fz)?;
                cpu.inner_mut().set_frozen(&format!("t{i}"), fz)?;
            }
            gpu.step(&arena)?;
            cpu.step(&mut params, &grads)?;
            for (g, w) in arena.read_all_params()?.iter().zip(&params) {
                cmps[0].add(g, w);
            }
            let image = gpu.read_slow_image()?;
            let l = gpu.slow_layout();
            for (&i, &off) in l.members().iter().zip(l.state_offsets()) {
                if let Ok(want) = cpu.read_slow(&format!("t{i}")) {
                    cmps[1].add(&image[off..off + lens[i]], &want);
                }
            }
            for (s, name) in names.iter().enumerate() {
                let got = arena
                    .layout()
                    .unpack(&gpu.inner().read_state_image(name)?)?;
                for (i, g) in got.iter().enumerate() {
                    let t = format!("t{i}");
                    if cpu.inner().tensor_state_names(&t)?.contains(name) {
                        cmps[s + 2].add(g, &cpu.inner().read_state(name, &t)?);
                    }
                }
            }
        }
        for (s, c) in cmps.iter().enumerate() {
            let buffer = match s {
                0 => "param",
                1 => "slow",
                _ => names[s - 2],
            };
            rows.push(c.row(&label, buffer, lens.iter().sum()));
        }
    }
    Ok(rows)
}

/// Mixed precision (`--optimizers mixed`, and in the full run): every optimizer variant of
/// the table except Muon and Adafactor, in f16 (the adapter's path, and forced packed) and bf16, on the GPU
/// against `CpuOptimizer::step_mixed`: the f32 master weights and state at the fp32
/// tolerance, and the 16-bit model copy, which must equal the `half` crate's rounding of the
/// GPU's master weights bit for bit (its row's max_abs_err is the largest difference, and the
/// row fails on any mismatch).
fn verify_mixed(ctx: &GpuContext, steps: usize, rng: &mut fastrand::Rng) -> Result<Vec<VerifyRow>> {
    let lens = VERIFY_LENS;
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let modes = [
        (Precision::F16, false),
        (Precision::F16, true),
        (Precision::BF16, false),
    ];
    let configs: Vec<OptimizerConfig> = OptimizerConfig::variants()
        .into_iter()
        .filter(|c| c.runs_mixed_precision())
        .collect();
    let pb = progress((configs.len() * modes.len()) as u64, "verify mixed");
    let mut rows = Vec::new();
    for cfg in &configs {
        for (p, force_packed) in modes {
            let arena =
                ParamArena::with_precision(ctx, &specs, p, PrecisionOptions { force_packed })?;
            let label = format!(
                "{} [{}, {:?}]",
                cfg.describe(),
                if p == Precision::F16 { "f16" } else { "bf16" },
                arena.half_path()
            );
            pb.set_message(label.clone());
            let mut gpu = Optimizer::new(ctx, &arena, cfg.clone())?;
            let mut cpu = CpuOptimizer::new(cfg.clone(), &specs)?;
            let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(rng, n, 1.0)).collect();
            arena.write_all_params(&master)?;
            let names = gpu.state_names();
            let mut cmps: Vec<Cmp> = (0..=names.len()).map(|_| Cmp::default()).collect();
            let (mut model_err, mut model_bad) = (0f64, 0usize);
            for _ in 0..steps {
                let grads: Vec<Vec<u16>> = lens
                    .iter()
                    .map(|&n| to_bits16(p.grads, &randn(rng, n, 0.5)))
                    .collect();
                for (i, g) in grads.iter().enumerate() {
                    arena.write_grads_bits(&format!("t{i}"), g)?;
                }
                gpu.step(&arena)?;
                cpu.step_mixed(&mut master, &grads, p.grads)?;
                let got = arena.read_all_params()?;
                for (i, g) in got.iter().enumerate() {
                    cmps[0].add(g, &master[i]);
                    let t = format!("t{i}");
                    let model = arena.read_model(&t)?;
                    let want: Vec<f32> = g.iter().map(|&x| p.model.round(x)).collect();
                    for (&a, &b) in model.iter().zip(&want) {
                        if a.to_bits() != b.to_bits() {
                            model_bad += 1;
                            model_err = model_err.max(((a - b) as f64).abs());
                        }
                    }
                    for (s, name) in names.iter().enumerate() {
                        if cpu.tensor_state_names(&t)?.contains(name) {
                            cmps[s + 1].add(&gpu.read_state(name, &t)?, &cpu.read_state(name, &t)?);
                        }
                    }
                }
            }
            let elements = lens.iter().sum();
            for (s, c) in cmps.iter().enumerate() {
                let buffer = if s == 0 { "master" } else { names[s - 1] };
                rows.push(c.row(&label, buffer, elements));
            }
            rows.push(VerifyRow {
                optimizer: label,
                buffer: "model (bits)".into(),
                elements,
                max_abs_err: model_err,
                max_rel_err: 0.0,
                pass: model_bad == 0,
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(rows)
}

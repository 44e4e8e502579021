//! `optbench verify`: every optimizer variant, with and without gradient clipping, and the
//! norms, on the GPU against the CPU reference.

use anyhow::{bail, Result};
use serde::Serialize;
use wgpu_optim::norm::{cpu_clip_grad_norm, cpu_norms};
use wgpu_optim::{
    AdagradConfig, AdamConfig, GpuContext, GradClipper, GroupHyper, LambConfig, LarsConfig,
    NormReducer, NormType, OptimizerConfig, ParamArena, RmspropConfig, SgdConfig, TensorSpec,
};

use crate::tables::table;
use crate::util::{progress, randn};
use crate::Opts;

/// PyTorch's fp32 `assert_close` tolerance: `|got - want| <= ATOL + RTOL * |want|`.
const ATOL: f64 = 1e-5;
/// See [`ATOL`].
const RTOL: f64 = 1.3e-6;

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

pub(crate) fn print_verify(r: &VerifyReport) {
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

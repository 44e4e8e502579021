//! Schedule-Free AdamW and SGD (`schedulefree` 1.4.1, SPEC-2 §2.13). Not in the PyTorch
//! fixtures: the CPU twin is checked against an f64 transcription of SPEC-2's pseudo-code (below)
//! over 20 steps with warmup, r != 0, weight decay, frozen tensors and mode swaps; the GPU against
//! the CPU twin at PyTorch's fp32 tolerance; then the modes, the invalid hyperparameters, a
//! segment mix and the WGSL struct sizes.

use crate::common::{assert_close, gpu, randn, ATOL, RTOL};
use wgpu_optim::optim::schedule_free::{self, ScheduleFreeHyper, ScheduleFreeTensor};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, CpuOptimizer, Error, Optimizer, OptimizerConfig, ParamArena, ParamGroups,
    ScheduleFreeAdamWConfig, ScheduleFreeSgdConfig, Select, TensorSpec,
};

// ---------------------------------------------------------------------------------------------
// The f64 reference: SPEC-2 §2.13, literally.

#[derive(Clone, Copy)]
struct RefCfg {
    adam: bool,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    wd: f64,
    warmup: u64,
    r: f64,
    power: f64,
}

impl From<&OptimizerConfig> for RefCfg {
    fn from(c: &OptimizerConfig) -> Self {
        match c {
            OptimizerConfig::ScheduleFreeAdamW(c) => RefCfg {
                adam: true,
                lr: c.lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                wd: c.weight_decay,
                warmup: c.warmup_steps,
                r: c.r,
                power: c.weight_lr_power,
            },
            OptimizerConfig::ScheduleFreeSgd(c) => RefCfg {
                adam: false,
                lr: c.lr,
                beta1: c.momentum,
                beta2: 0.0,
                eps: 0.0,
                wd: c.weight_decay,
                warmup: c.warmup_steps,
                r: c.r,
                power: c.weight_lr_power,
            },
            _ => unreachable!(),
        }
    }
}

/// One group's reference state: group scalars, and per tensor p (y in train mode), z, v.
struct RefOpt {
    cfg: RefCfg,
    k: u64,
    lr_max: f64,
    weight_sum: f64,
    p: Vec<Vec<f64>>,
    z: Vec<Option<Vec<f64>>>,
    v: Vec<Vec<f64>>,
}

impl RefOpt {
    fn new(cfg: RefCfg, init: &[Vec<f32>]) -> Self {
        Self {
            cfg,
            k: 0,
            lr_max: -1.0,
            weight_sum: 0.0,
            p: init
                .iter()
                .map(|t| t.iter().map(|&x| x as f64).collect())
                .collect(),
            z: vec![None; init.len()],
            v: init.iter().map(|t| vec![0.0; t.len()]).collect(),
        }
    }

    fn step(&mut self, grads: &[Vec<f32>], frozen: &[bool]) {
        let c = self.cfg;
        let k = self.k as f64;
        let sched = if self.k < c.warmup {
            (k + 1.0) / c.warmup as f64
        } else {
            1.0
        };
        let lr_k = c.lr * sched;
        self.lr_max = self.lr_max.max(lr_k);
        let w = (k + 1.0).powf(c.r) * self.lr_max.powf(c.power);
        self.weight_sum += w;
        let ck = if self.weight_sum == 0.0 {
            0.0
        } else {
            w / self.weight_sum
        };
        let bc2 = 1.0 - c.beta2.powf(k + 1.0);
        for t in 0..self.p.len() {
            if frozen[t] {
                continue;
            }
            let y = &mut self.p[t];
            let z = self.z[t].get_or_insert_with(|| y.clone());
            let v = &mut self.v[t];
            for i in 0..y.len() {
                let g = grads[t][i] as f64;
                let mut d = if c.adam {
                    v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                    g / ((v[i] / bc2).sqrt() + c.eps)
                } else {
                    g
                };
                if c.wd != 0.0 {
                    d += c.wd * y[i];
                }
                y[i] += ck * (z[i] - y[i]);
                y[i] += lr_k * (c.beta1 * (1.0 - ck) - 1.0) * d;
                z[i] -= lr_k * d;
            }
        }
        self.k += 1;
    }

    /// eval (y -> x) or train (x -> y), on the tensors with a z.
    fn swap(&mut self, to_train: bool) {
        let w = if to_train {
            1.0 - self.cfg.beta1
        } else {
            1.0 - 1.0 / self.cfg.beta1
        };
        for (p, z) in self.p.iter_mut().zip(&self.z) {
            if let Some(z) = z {
                for (pi, zi) in p.iter_mut().zip(z) {
                    *pi += w * (zi - *pi);
                }
            }
        }
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Frozen pattern: tensor 2 is frozen for its first 3 steps (its z is its value at step 4, with
/// the group's k = 3), tensor 1 every third step.
fn frozen_at(step: usize, tensor: usize) -> bool {
    match tensor {
        1 => step % 3 == 1,
        2 => step < 3,
        _ => false,
    }
}

const LENS: [usize; 4] = [37, 300, 5, 1];

fn specs() -> Vec<TensorSpec> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect()
}

fn names() -> Vec<String> {
    (0..LENS.len()).map(|i| format!("t{i}")).collect()
}

fn ref_configs() -> Vec<OptimizerConfig> {
    vec![
        ScheduleFreeAdamWConfig {
            lr: 0.02,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.05,
            warmup_steps: 6,
            r: 0.5,
            weight_lr_power: 2.0,
        }
        .into(),
        ScheduleFreeSgdConfig {
            lr: 0.1,
            momentum: 0.8,
            weight_decay: 0.05,
            warmup_steps: 6,
            r: 1.5,
            weight_lr_power: 1.0,
        }
        .into(),
    ]
}

/// Tolerance of the f32 twin against the f64 reference after 20 steps: rounding only (~20 f32
/// roundings of O(1) values, amplified at most by AdamW's normalisation).
const REF_ATOL: f32 = 1e-5;
const REF_RTOL: f32 = 1e-5;

#[test]
fn cpu_twin_matches_the_f64_reference_over_20_steps() {
    let mut rng = fastrand::Rng::with_seed(7);
    for cfg in ref_configs() {
        let init: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        let mut reference = RefOpt::new(RefCfg::from(&cfg), &init);
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs()).unwrap();
        let mut params = init.clone();
        let names = names();
        for k in 0..20 {
            let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            let frozen: Vec<bool> = (0..LENS.len()).map(|t| frozen_at(k, t)).collect();
            for (t, n) in names.iter().enumerate() {
                cpu.set_frozen(n, frozen[t]).unwrap();
            }
            reference.step(&grads, &frozen);
            cpu.step(&mut params, &grads).unwrap();
            // An eval/train round trip every 7 steps (x is checked too).
            if k % 7 == 6 {
                reference.swap(false);
                cpu.eval(&mut params).unwrap();
                for (t, (got, want)) in params.iter().zip(&reference.p).enumerate() {
                    let what = format!("{} step {k} x of t{t}", cfg.name());
                    assert_close(&what, got, &to_f32(want), REF_ATOL, REF_RTOL);
                }
                reference.swap(true);
                cpu.train(&mut params).unwrap();
            }
            for t in 0..LENS.len() {
                let what = format!("{} step {k} t{t}", cfg.name());
                let want = to_f32(&reference.p[t]);
                assert_close(&format!("{what} y"), &params[t], &want, REF_ATOL, REF_RTOL);
                let z = cpu.read_state("z", &names[t]).unwrap();
                match &reference.z[t] {
                    Some(zr) => {
                        assert_close(&format!("{what} z"), &z, &to_f32(zr), REF_ATOL, REF_RTOL)
                    }
                    None => assert!(
                        z.iter().all(|&x| x == 0.0),
                        "{what}: z before the first step"
                    ),
                }
                if RefCfg::from(&cfg).adam {
                    let v = cpu.read_state("exp_avg_sq", &names[t]).unwrap();
                    assert_close(
                        &format!("{what} v"),
                        &v,
                        &to_f32(&reference.v[t]),
                        REF_ATOL,
                        REF_RTOL,
                    );
                }
            }
            assert_eq!(cpu.group_state(0, "k").unwrap(), (k + 1) as f64);
            let rel = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
            assert!(rel(cpu.group_state(0, "lr_max").unwrap(), reference.lr_max));
            assert!(rel(
                cpu.group_state(0, "weight_sum").unwrap(),
                reference.weight_sum
            ));
        }
        assert_eq!(cpu.step_count("t2").unwrap(), 17);
        assert!(matches!(
            cpu.group_state(0, "nope"),
            Err(Error::UnknownState { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// GPU against the CPU twin.

fn check_gpu_cpu(
    what: &str,
    arena: &ParamArena,
    gpu: &Optimizer,
    cpu: &CpuOptimizer,
    params: &[Vec<f32>],
) {
    let got = arena.read_all_params().unwrap();
    for (i, t) in arena.layout().tensors().iter().enumerate() {
        let w = format!("{what} {}", t.name);
        assert_close(&format!("{w} param"), &got[i], &params[i], ATOL, RTOL);
        let names = cpu.tensor_state_names(&t.name).unwrap();
        assert_eq!(gpu.tensor_state_names(&t.name).unwrap(), names, "{w}");
        for s in names {
            let g = gpu.read_state(s, &t.name).unwrap();
            let c = cpu.read_state(s, &t.name).unwrap();
            assert_close(&format!("{w} {s}"), &g, &c, ATOL, RTOL);
        }
        assert_eq!(
            gpu.step_count(&t.name).unwrap(),
            cpu.step_count(&t.name).unwrap()
        );
    }
    for g in 0..gpu.groups() {
        for &n in gpu.group_config(g).unwrap().group_scalar_names() {
            assert_eq!(
                gpu.group_state(g, n).unwrap(),
                cpu.group_state(g, n).unwrap(),
                "{what} group {g} {n}"
            );
        }
    }
}

/// Steps GPU and CPU side by side for `steps` steps with the frozen pattern, swapping to eval and
/// back every 3 steps when `swaps`, and compares after every step and every swap.
fn run_pair(
    groups: ParamGroups,
    specs: &[TensorSpec],
    steps: usize,
    seed: u64,
    label: &str,
    swaps: bool,
) {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, specs).unwrap();
    let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(specs, groups).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    for k in 0..steps {
        let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 0.5)).collect();
        arena.write_all_grads(&grads).unwrap();
        for (t, s) in specs.iter().enumerate() {
            gpu.set_frozen(&s.name, frozen_at(k, t)).unwrap();
            cpu.set_frozen(&s.name, frozen_at(k, t)).unwrap();
        }
        gpu.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        check_gpu_cpu(&format!("{label} step {k}"), &arena, &gpu, &cpu, &params);
        if swaps && k % 3 == 1 {
            gpu.eval(&arena).unwrap();
            cpu.eval(&mut params).unwrap();
            check_gpu_cpu(
                &format!("{label} eval after {k}"),
                &arena,
                &gpu,
                &cpu,
                &params,
            );
            gpu.train(&arena).unwrap();
            cpu.train(&mut params).unwrap();
            check_gpu_cpu(
                &format!("{label} train after {k}"),
                &arena,
                &gpu,
                &cpu,
                &params,
            );
        }
    }
}

#[test]
fn gpu_matches_cpu_with_frozen_tensors_and_swaps() {
    let configs: Vec<OptimizerConfig> = [
        ref_configs(),
        OptimizerConfig::variants()
            .into_iter()
            .filter(|c| c.has_train_mode())
            .collect(),
    ]
    .concat();
    // Awkward sizes: a packed tail of small tensors, a multi-chunk tensor, an empty one.
    let specs: Vec<TensorSpec> = [37usize, 300, 5, 1, 9000, 0, 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    for (j, cfg) in configs.iter().enumerate() {
        let groups = ParamGroups::new().group(Select::All, cfg.clone());
        // beta1 = 0 has no eval mode (checked in modes_on_the_gpu).
        let swaps = !matches!(cfg, OptimizerConfig::ScheduleFreeAdamW(c) if c.beta1 == 0.0);
        run_pair(groups, &specs, 8, 40 + j as u64, cfg.name(), swaps);
    }
}

/// Schedule-Free AdamW and SGD on some tensors, AdamW on the rest: three segments, 7 steps, a
/// frozen tensor; the swaps leave the AdamW tensors alone.
#[test]
fn two_and_three_segments_match_cpu() {
    let specs: Vec<TensorSpec> = [64usize, 300, 5, 17, 4100]
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let sf = ref_configs();
    let two = ParamGroups::new()
        .group(Select::names(["t0", "t2", "t4"]), sf[0].clone())
        .group(Select::Rest, AdamConfig::adamw());
    run_pair(two, &specs, 7, 90, "sf-adamw+adamw", true);
    let three = ParamGroups::new()
        .group(Select::names(["t0", "t2"]), sf[0].clone())
        .group(Select::names(["t1", "t4"]), sf[1].clone())
        .group(Select::Rest, AdamConfig::adamw());
    run_pair(three, &specs, 7, 91, "sf-adamw+sf-sgd+adamw", true);
}

// ---------------------------------------------------------------------------------------------
// Modes.

#[test]
fn modes_start_in_train_refuse_steps_in_eval_and_are_idempotent_on_cpu() {
    let cfg = ref_configs()[0].clone();
    let mut cpu = CpuOptimizer::new(cfg, &specs()).unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut params: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    assert!(cpu.is_train_mode());
    // Before any step every mode swap is a no-op on the values (no tensor has a z).
    let p0 = params.clone();
    cpu.eval(&mut params).unwrap();
    assert!(!cpu.is_train_mode());
    assert_eq!(params, p0);
    let e = cpu.step(&mut params, &grads).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert_eq!(params, p0);
    assert_eq!(cpu.step_count("t0").unwrap(), 0);
    assert_eq!(cpu.group_state(0, "k").unwrap(), 0.0);
    cpu.train(&mut params).unwrap();
    assert_eq!(params, p0);
    cpu.step(&mut params, &grads).unwrap();
    cpu.step(&mut params, &grads).unwrap();
    // eval twice = eval once; train twice = train once.
    cpu.eval(&mut params).unwrap();
    let x = params.clone();
    cpu.eval(&mut params).unwrap();
    assert_eq!(params, x);
    let state = cpu.read_state("z", "t0").unwrap();
    assert!(cpu.step(&mut params, &grads).is_err());
    assert_eq!(params, x);
    assert_eq!(cpu.read_state("z", "t0").unwrap(), state);
    assert_eq!(cpu.group_state(0, "k").unwrap(), 2.0);
    cpu.train(&mut params).unwrap();
    let y = params.clone();
    cpu.train(&mut params).unwrap();
    assert_eq!(params, y);
    // eval then train is the identity up to rounding.
    assert_close(
        "round trip",
        &y[1],
        &p_after_two_steps(&cfg_ref(), &p0, &grads)[1],
        1e-5,
        1e-5,
    );
    cpu.step(&mut params, &grads).unwrap();
    // Lengths are checked first.
    let mut short = vec![vec![0.0f32; 1]];
    assert!(matches!(
        cpu.eval(&mut short),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(cpu.is_train_mode());
}

fn cfg_ref() -> RefCfg {
    RefCfg::from(&ref_configs()[0])
}

fn p_after_two_steps(c: &RefCfg, p0: &[Vec<f32>], grads: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut r = RefOpt::new(*c, p0);
    r.step(grads, &[false; 4]);
    r.step(grads, &[false; 4]);
    r.p.iter().map(|p| to_f32(p)).collect()
}

#[test]
fn modes_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs()).unwrap();
    let mut rng = fastrand::Rng::with_seed(4);
    let p0: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&p0).unwrap();
    arena.write_all_grads(&grads).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, ref_configs()[1].clone()).unwrap();
    assert!(opt.is_train_mode());
    opt.eval(&arena).unwrap();
    assert_eq!(arena.read_all_params().unwrap(), p0);
    assert!(matches!(opt.step(&arena), Err(Error::Unsupported(_))));
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    assert!(matches!(
        opt.encode_step(&mut enc, &arena),
        Err(Error::Unsupported(_))
    ));
    drop(enc);
    assert_eq!(arena.read_all_params().unwrap(), p0);
    assert_eq!(opt.step_count("t0").unwrap(), 0);
    assert_eq!(opt.group_state(0, "k").unwrap(), 0.0);
    opt.train(&arena).unwrap();
    opt.step(&arena).unwrap();
    opt.eval(&arena).unwrap();
    let x = arena.read_all_params().unwrap();
    opt.eval(&arena).unwrap();
    assert_eq!(arena.read_all_params().unwrap(), x);
    assert!(opt.step(&arena).is_err());
    assert_eq!(arena.read_all_params().unwrap(), x);
    assert_eq!(opt.step_count("t0").unwrap(), 1);
    // AdamW with beta1 = 0 cannot go to eval mode (1 - 1/beta1); nothing changes.
    let mut adam0 = Optimizer::new(
        &ctx,
        &arena,
        ScheduleFreeAdamWConfig {
            beta1: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    adam0.step(&arena).unwrap();
    let before = arena.read_all_params().unwrap();
    assert!(matches!(
        adam0.eval(&arena),
        Err(Error::InvalidHyperparameter { name: "beta1", .. })
    ));
    assert!(adam0.is_train_mode());
    assert_eq!(arena.read_all_params().unwrap(), before);
    // Rules without modes ignore the swap and keep stepping.
    let mut adam = Optimizer::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
    adam.eval(&arena).unwrap();
    assert_eq!(arena.read_all_params().unwrap(), before);
    adam.step(&arena).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hyperparameters, presets, struct sizes.

#[test]
fn defaults_are_the_packages() {
    let a = ScheduleFreeAdamWConfig::default();
    assert_eq!(
        (
            a.lr,
            a.beta1,
            a.beta2,
            a.eps,
            a.weight_decay,
            a.warmup_steps,
            a.r,
            a.weight_lr_power
        ),
        (0.0025, 0.9, 0.999, 1e-8, 0.0, 0, 0.0, 2.0)
    );
    let s = ScheduleFreeSgdConfig::default();
    assert_eq!(
        (
            s.lr,
            s.momentum,
            s.weight_decay,
            s.warmup_steps,
            s.r,
            s.weight_lr_power
        ),
        (1.0, 0.9, 0.0, 0, 0.0, 2.0)
    );
    for name in ["schedule-free-adamw", "schedule-free-sgd"] {
        let p = OptimizerConfig::preset(name).unwrap();
        assert!(p.has_train_mode());
        assert_eq!(p.name(), name);
    }
    assert_eq!(OptimizerConfig::from(a).bytes_per_element(), 28);
    assert_eq!(OptimizerConfig::from(s).bytes_per_element(), 20);
}

#[test]
fn invalid_hyperparameters_are_rejected() {
    let d = ScheduleFreeSgdConfig::default();
    let bad: Vec<(ScheduleFreeSgdConfig, &str)> = vec![
        (
            ScheduleFreeSgdConfig {
                lr: -0.1,
                ..d.clone()
            },
            "lr",
        ),
        (
            ScheduleFreeSgdConfig {
                lr: f64::NAN,
                ..d.clone()
            },
            "lr",
        ),
        (
            ScheduleFreeSgdConfig {
                weight_decay: -1e-3,
                ..d.clone()
            },
            "weight_decay",
        ),
        (
            ScheduleFreeSgdConfig {
                momentum: 0.0,
                ..d.clone()
            },
            "momentum",
        ),
        (
            ScheduleFreeSgdConfig {
                momentum: 1.0,
                ..d.clone()
            },
            "momentum",
        ),
        (
            ScheduleFreeSgdConfig {
                momentum: -0.5,
                ..d.clone()
            },
            "momentum",
        ),
        (
            ScheduleFreeSgdConfig {
                momentum: 1.5,
                ..d.clone()
            },
            "momentum",
        ),
        (
            ScheduleFreeSgdConfig {
                momentum: f64::NAN,
                ..d.clone()
            },
            "momentum",
        ),
    ];
    let ctx = gpu();
    for (cfg, field) in bad {
        let e = CpuOptimizer::new(cfg.clone(), &specs()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { name, .. } if name == field),
            "{cfg:?}: {e:?}"
        );
        if let Some(ctx) = &ctx {
            let arena = ParamArena::new(ctx, &specs()).unwrap();
            let e = Optimizer::new(ctx, &arena, cfg.clone()).unwrap_err();
            assert!(
                matches!(e, Error::InvalidHyperparameter { name, .. } if name == field),
                "{cfg:?}: {e:?}"
            );
        }
    }
    // The package validates nothing for AdamW.
    let odd = ScheduleFreeAdamWConfig {
        beta1: 1.5,
        beta2: -1.0,
        eps: -1.0,
        weight_decay: -0.1,
        r: -3.0,
        ..Default::default()
    };
    CpuOptimizer::new(odd, &specs()).unwrap();
}

#[test]
fn wgsl_validates_and_structs_have_the_rust_sizes() {
    let k = schedule_free::SCHEDULE_FREE_ADAMW_STEP;
    let module = naga::front::wgsl::parse_str(k.source)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(k.source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(k.source)));
    for entry in [
        schedule_free::SCHEDULE_FREE_ADAMW_STEP,
        schedule_free::SCHEDULE_FREE_SGD_STEP,
        schedule_free::SCHEDULE_FREE_SWAP,
    ] {
        assert!(module
            .entry_points
            .iter()
            .any(|e| e.name == entry.entry_point()));
    }
    assert_eq!(
        crate::common::naga_sizes::wgsl_size(k, "ScheduleFreeHyper"),
        std::mem::size_of::<ScheduleFreeHyper>()
    );
    assert_eq!(
        crate::common::naga_sizes::wgsl_size(k, "ScheduleFreeTensor"),
        std::mem::size_of::<ScheduleFreeTensor>()
    );
    assert_eq!(std::mem::size_of::<ScheduleFreeHyper>() % 16, 0);
    assert_eq!(std::mem::size_of::<ScheduleFreeTensor>() % 16, 0);
}

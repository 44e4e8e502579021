//! Hypergradient descent (SGD-HD, SGDN-HD, Adam-HD; Baydin et al., ICLR 2018): the GPU's
//! three-pass step against the CPU twin over 20 steps (params, every state buffer and the
//! learned lr of every group, at awkward sizes and over many small tensors, with the global and
//! the per-group dot and two groups of different hypergradient lrs, tensors frozen on some
//! steps); the learned lr bitwise reproducible across fresh optimizers; frozen tensors left out
//! of the dot; the quadratic `f(x) = 0.5 * sum(a_i x_i^2)` from an lr 100x too small and one 10x
//! too large; `set_group_lr` restarting the learned lr; the learned lr written back from a
//! checkpoint; every bad hyperparameter and bad write as a typed error; the WGSL struct sizes
//! and flag constants.
//!
//! Tolerance: GPU against the CPU twin bit for bit on lavapipe (the twin sums the dot in the
//! kernels' tree order), PyTorch's fp32 tolerance on other adapters (`assert_twin`).

use crate::common::{assert_twin, bits_eq, exact_adapter, gpu, randn};
use wgpu_optim::optim::{adam_hd, sgd_hd};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, AdamHdConfig, CpuOptimizer, Error, GpuContext, HdScope, Optimizer, OptimizerConfig,
    ParamArena, ParamGroups, Select, SgdHdConfig, TensorSpec,
};

const STEPS: usize = 20;

/// Tensors `t0, t1, ...` of these lengths, alternating between arena groups 0 and 1.
fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect()
}

/// Every tensor is frozen on some steps, never on all.
fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 6 == 0
}

/// Many small tensors of awkward lengths (some empty, some one element).
fn many_small(seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..300)
        .map(|i| match i % 7 {
            0 => 0,
            1 => 1,
            _ => rng.usize(2..700),
        })
        .collect()
}

/// The same configuration with another hypergradient lr and scope.
fn with_beta(cfg: &OptimizerConfig, beta: f64, scope: HdScope) -> OptimizerConfig {
    let mut c = cfg.clone();
    match &mut c {
        OptimizerConfig::SgdHd(x) => (x.hypergrad_lr, x.scope) = (beta, scope),
        OptimizerConfig::AdamHd(x) => (x.hypergrad_lr, x.scope) = (beta, scope),
        _ => unreachable!("not a hypergradient configuration"),
    }
    c
}

fn weight_decay(cfg: &OptimizerConfig) -> f64 {
    match cfg {
        OptimizerConfig::SgdHd(x) => x.weight_decay,
        OptimizerConfig::AdamHd(x) => x.weight_decay,
        _ => unreachable!("not a hypergradient configuration"),
    }
}

fn hypergrad_lr(cfg: &OptimizerConfig) -> f64 {
    match cfg {
        OptimizerConfig::SgdHd(x) => x.hypergrad_lr,
        OptimizerConfig::AdamHd(x) => x.hypergrad_lr,
        _ => unreachable!("not a hypergradient configuration"),
    }
}

/// The hypergradient configurations the parity trials run: SGD-HD, SGD-HD with momentum,
/// dampening and weight decay, SGDN-HD, Adam-HD, Adam-HD with weight decay.
fn hd_configs() -> Vec<OptimizerConfig> {
    vec![
        SgdHdConfig {
            lr: 0.01,
            hypergrad_lr: 1e-4,
            ..Default::default()
        }
        .into(),
        SgdHdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 1e-2,
            hypergrad_lr: 1e-4,
            ..Default::default()
        }
        .into(),
        SgdHdConfig {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            hypergrad_lr: 1e-5,
            ..Default::default()
        }
        .into(),
        AdamHdConfig {
            lr: 2e-3,
            hypergrad_lr: 1e-6,
            ..Default::default()
        }
        .into(),
        AdamHdConfig {
            lr: 2e-3,
            beta1: 0.8,
            weight_decay: 1e-2,
            hypergrad_lr: 1e-6,
            ..Default::default()
        }
        .into(),
    ]
}

/// Two groups (even and odd tensors): group 1 with 3x the hypergradient lr and half the lr.
fn two_groups(cfg: &OptimizerConfig, scope: HdScope) -> ParamGroups {
    let beta = hypergrad_lr(cfg);
    let g0 = with_beta(cfg, beta, scope);
    let g1 = with_beta(cfg, beta * 3.0, scope).with_lr(cfg.lr() * 0.5);
    ParamGroups::new()
        .group(Select::ArenaGroup(0), g0)
        .group(Select::ArenaGroup(1), g1)
}

/// GPU and CPU side by side for STEPS steps; compares params, every state buffer and the
/// learned lrs after every step, and checks the learned lrs moved.
fn parity(ctx: &GpuContext, cfg: &OptimizerConfig, scope: HdScope, lens: &[usize], seed: u64) {
    let specs = specs(lens);
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let groups = two_groups(cfg, scope);
    let mut gpu = Optimizer::with_groups(ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let what = format!(
        "{} {scope:?} over {} tensors ({} elements)",
        cfg.name(),
        lens.len(),
        lens.iter().sum::<usize>()
    );
    let initial = gpu.read_learned_lr().unwrap().unwrap();
    assert_eq!(initial, vec![cfg.lr() as f32, (cfg.lr() * 0.5) as f32]);
    let states = gpu.state_names();
    assert!(states.contains(&"prev_direction"), "{what}: {states:?}");
    // Gradients that keep some correlation from step to step (as on a real loss), so the
    // hypergradient is not pure noise.
    let mut grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
    for k in 0..STEPS {
        for g in &mut grads {
            let noise = randn(&mut rng, g.len(), 0.5);
            for (x, e) in g.iter_mut().zip(noise) {
                *x = 0.7 * *x + e;
            }
        }
        arena.write_all_grads(&grads).unwrap();
        for i in 0..lens.len() {
            let name = format!("t{i}");
            gpu.set_frozen(&name, frozen(k, i)).unwrap();
            cpu.set_frozen(&name, frozen(k, i)).unwrap();
        }
        gpu.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        let w = format!("{what} step {k}");
        let lr_gpu = gpu.read_learned_lr().unwrap().unwrap();
        let lr_cpu = cpu.read_learned_lr().unwrap().unwrap();
        assert_twin(ctx, &format!("{w} learned lr"), &lr_gpu, &lr_cpu);
        let got = arena.read_all_params().unwrap();
        for (i, (g, c)) in got.iter().zip(&params).enumerate() {
            assert_twin(ctx, &format!("{w} t{i} param"), g, c);
        }
        for st in &states {
            let image = arena
                .layout()
                .unpack(&gpu.read_state_image(st).unwrap())
                .unwrap();
            for (i, g) in image.iter().enumerate() {
                let c = cpu.read_state(st, &format!("t{i}")).unwrap();
                assert_twin(ctx, &format!("{w} t{i} {st}"), g, &c);
            }
        }
    }
    let last = gpu.read_learned_lr().unwrap().unwrap();
    for (g, (&a, &b)) in initial.iter().zip(&last).enumerate() {
        assert!(a != b, "{what}: group {g}'s learned lr never moved ({a})");
    }
}

#[test]
fn gpu_matches_cpu_over_20_steps_at_awkward_sizes() {
    let Some(ctx) = gpu() else { return };
    for (c, cfg) in hd_configs().iter().enumerate() {
        for scope in [HdScope::Global, HdScope::Group] {
            parity(&ctx, cfg, scope, &[1, 255, 257, 278011], 10 + c as u64);
        }
    }
}

#[test]
fn gpu_matches_cpu_over_20_steps_on_many_small_tensors() {
    let Some(ctx) = gpu() else { return };
    for (c, cfg) in hd_configs().iter().enumerate() {
        for scope in [HdScope::Global, HdScope::Group] {
            parity(&ctx, cfg, scope, &many_small(c as u64), 20 + c as u64);
        }
    }
}

/// With one group, the global and the per-group dot are the same; with two groups under the
/// global scope and equal hyperparameters, both groups learn the same lr (one lr per
/// optimizer, the paper's form), and under the per-group scope they differ.
#[test]
fn global_scope_is_one_lr_per_optimizer() {
    let Some(ctx) = gpu() else { return };
    let lens = [300, 5000, 77, 9000];
    let specs = specs(&lens);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..6)
        .map(|_| lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect())
        .collect();
    let run = |scope: HdScope| -> Vec<f32> {
        arena.write_all_params(&params).unwrap();
        let cfg = SgdHdConfig {
            lr: 0.01,
            hypergrad_lr: 1e-4,
            scope,
            ..Default::default()
        };
        // Optimizer::new: one group per arena group, each a copy of cfg.
        let mut opt = Optimizer::new(&ctx, &arena, cfg).unwrap();
        assert_eq!(opt.groups(), 2);
        for g in &grads {
            arena.write_all_grads(g).unwrap();
            opt.step(&arena).unwrap();
        }
        opt.read_learned_lr().unwrap().unwrap()
    };
    let global = run(HdScope::Global);
    assert_eq!(global[0].to_bits(), global[1].to_bits(), "{global:?}");
    let group = run(HdScope::Group);
    assert!(group[0] != group[1], "{group:?}");
    println!("global scope: {global:?}; per-group scope: {group:?}");
}

#[test]
fn learned_lr_is_bitwise_reproducible() {
    let Some(ctx) = gpu() else { return };
    let mut lens = vec![278011, 1, 4096 * 40 + 3];
    lens.extend(many_small(3));
    let specs = specs(&lens);
    let mut rng = fastrand::Rng::with_seed(77);
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..8)
        .map(|_| lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect())
        .collect();
    for cfg in hd_configs() {
        for scope in [HdScope::Global, HdScope::Group] {
            let groups = two_groups(&cfg, scope);
            let mut runs = Vec::new();
            for _ in 0..2 {
                // A fresh arena and optimizer each time, the same data.
                let arena = ParamArena::new(&ctx, &specs).unwrap();
                arena.write_all_params(&params).unwrap();
                let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
                let mut lrs = Vec::new();
                for g in &grads {
                    arena.write_all_grads(g).unwrap();
                    opt.step(&arena).unwrap();
                    lrs.push(opt.read_learned_lr().unwrap().unwrap());
                }
                let p: Vec<f32> = arena.read_all_params().unwrap().concat();
                runs.push((lrs, p));
            }
            let what = format!("{} {scope:?}", cfg.name());
            for (k, (a, b)) in runs[0].0.iter().zip(&runs[1].0).enumerate() {
                assert!(bits_eq(a, b), "{what} step {k}: {a:?} vs {b:?}");
            }
            assert!(bits_eq(&runs[0].1, &runs[1].1), "{what}: params differ");
        }
    }
}

/// A frozen tensor contributes nothing to h and is not updated: an optimizer over [a, b] with
/// b frozen learns the lr of an optimizer over [a] alone.
#[test]
fn frozen_tensors_are_left_out_of_the_dot() {
    let Some(ctx) = gpu() else { return };
    let (na, nb) = (9000, 5000);
    let mut rng = fastrand::Rng::with_seed(9);
    let pa = randn(&mut rng, na, 1.0);
    let pb = randn(&mut rng, nb, 1.0);
    let grads: Vec<(Vec<f32>, Vec<f32>)> = (0..5)
        .map(|_| (randn(&mut rng, na, 0.5), randn(&mut rng, nb, 0.5)))
        .collect();
    for cfg in hd_configs() {
        let both =
            ParamArena::new(&ctx, &[TensorSpec::new("a", na), TensorSpec::new("b", nb)]).unwrap();
        let alone = ParamArena::new(&ctx, &[TensorSpec::new("a", na)]).unwrap();
        both.write_params("a", &pa).unwrap();
        both.write_params("b", &pb).unwrap();
        alone.write_params("a", &pa).unwrap();
        let mut o2 = Optimizer::new(&ctx, &both, cfg.clone()).unwrap();
        let mut o1 = Optimizer::new(&ctx, &alone, cfg.clone()).unwrap();
        o2.set_frozen("b", true).unwrap();
        for (ga, gb) in &grads {
            both.write_grads("a", ga).unwrap();
            both.write_grads("b", gb).unwrap();
            alone.write_grads("a", ga).unwrap();
            o2.step(&both).unwrap();
            o1.step(&alone).unwrap();
        }
        let what = cfg.name();
        let l2 = o2.read_learned_lr().unwrap().unwrap();
        let l1 = o1.read_learned_lr().unwrap().unwrap();
        assert_twin(&ctx, &format!("{what} learned lr"), &l2, &l1);
        assert!(l1[0] != cfg.lr() as f32, "{what}: the lr never moved");
        assert!(
            bits_eq(&both.read_params("b").unwrap(), &pb),
            "{what}: b moved"
        );
        assert!(
            o2.read_state("prev_direction", "b")
                .unwrap()
                .iter()
                .all(|&x| x == 0.0),
            "{what}: b's direction was written"
        );
        assert_eq!(o2.step_count("b").unwrap(), 0);
    }
}

/// `f(x) = 0.5 * sum(a_i x_i^2)`, `a_i` spread over [0.2, 2.2] (stable SGD lrs: below
/// 2 / 2.2), over two tensors; returns the final loss and the final learned lr.
fn quadratic(ctx: &GpuContext, cfg: OptimizerConfig, steps: usize) -> (f64, f64) {
    let lens = [300, 200];
    let n: usize = lens.iter().sum();
    let a: Vec<f32> = (0..n)
        .map(|i| 0.2 + 2.0 * i as f32 / (n - 1) as f32)
        .collect();
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| TensorSpec::new(format!("x{i}"), l))
        .collect();
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let x0 = randn(&mut rng, n, 1.0);
    arena
        .write_all_params(&[x0[..300].to_vec(), x0[300..].to_vec()])
        .unwrap();
    let mut opt = Optimizer::new(ctx, &arena, cfg).unwrap();
    let loss = |x: &[f32]| -> f64 {
        x.iter()
            .zip(&a)
            .map(|(&x, &a)| 0.5 * a as f64 * x as f64 * x as f64)
            .sum()
    };
    let mut x = x0;
    for _ in 0..steps {
        let g: Vec<f32> = x.iter().zip(&a).map(|(x, a)| a * x).collect();
        arena
            .write_all_grads(&[g[..300].to_vec(), g[300..].to_vec()])
            .unwrap();
        opt.step(&arena).unwrap();
        x = arena.read_all_params().unwrap().concat();
        if !loss(&x).is_finite() {
            break;
        }
    }
    let lr = opt
        .read_learned_lr()
        .unwrap()
        .map_or(f64::NAN, |l| l[0] as f64);
    (loss(&x), lr)
}

/// From an lr 100x too small and one 10x too large, the learned lr moves toward the stable
/// range and the loss ends lower than with that lr fixed (hypergrad_lr 0 is the plain
/// optimizer).
#[test]
fn quadratic_learned_lr_moves_toward_the_stable_range() {
    let Some(ctx) = gpu() else { return };
    // (label, a good lr, beta, steps, the configuration at lr and beta)
    type Make = fn(f64, f64) -> OptimizerConfig;
    let cases: [(&str, f64, f64, usize, Make); 3] = [
        ("sgd-hd", 0.1, 1e-4, 60, |lr, beta| {
            SgdHdConfig {
                lr,
                hypergrad_lr: beta,
                ..Default::default()
            }
            .into()
        }),
        ("sgdn-hd", 0.07, 1e-5, 60, |lr, beta| {
            SgdHdConfig {
                lr,
                momentum: 0.9,
                nesterov: true,
                hypergrad_lr: beta,
                ..Default::default()
            }
            .into()
        }),
        ("adam-hd", 0.1, 1e-3, 60, |lr, beta| {
            AdamHdConfig {
                lr,
                hypergrad_lr: beta,
                ..Default::default()
            }
            .into()
        }),
    ];
    for (label, good, beta, steps, make) in cases {
        for (how, lr0) in [
            ("100x too small", good / 100.0),
            ("10x too large", good * 10.0),
        ] {
            let (fixed_loss, _) = quadratic(&ctx, make(lr0, 0.0), steps);
            let (hd_loss, hd_lr) = quadratic(&ctx, make(lr0, beta), steps);
            println!(
                "{label} from lr {lr0} ({how}): fixed lr loss {fixed_loss:.6e}; \
                 hypergradient loss {hd_loss:.6e}, learned lr {hd_lr:.6}"
            );
            assert!(hd_loss.is_finite(), "{label} {how}: diverged");
            assert!(
                hd_loss < fixed_loss,
                "{label} {how}: loss {hd_loss} not below the fixed lr's {fixed_loss}"
            );
            if lr0 < good {
                assert!(hd_lr > lr0 * 10.0, "{label} {how}: lr {hd_lr}");
            } else {
                assert!(
                    hd_lr < lr0 * 0.9 && hd_lr > 0.0,
                    "{label} {how}: lr {hd_lr}"
                );
            }
        }
    }
}

/// `set_group_lr` restarts that group's learned lr from the given value at the next step (which
/// still adds its hypergradient); the other group's learned lr carries on; `set_lr_factor`
/// restarts every group from its base lr times the factor. Each step's learned lr is checked
/// against `alpha_{t-1} + beta * h` with h an f64 dot on the host, and against the CPU twin.
#[test]
fn set_group_lr_restarts_the_learned_lr() {
    let Some(ctx) = gpu() else { return };
    let lens = [278011, 255, 1, 4100];
    let specs = specs(&lens);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(31);
    for cfg in hd_configs() {
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        let groups = two_groups(&cfg, HdScope::Group);
        let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
        let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
        let what = cfg.name();
        let beta0 = hypergrad_lr(&cfg) as f32 as f64;
        let wd = weight_decay(&cfg) as f32;
        let reset = cfg.lr() * 0.25;
        for k in 0..8 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            // Group 0's hypergradient of this step, on the host in f64: <g + wd p, d_prev>
            // over its tensors (the even ones).
            let mut h = 0.0f64;
            for i in (0..lens.len()).step_by(2) {
                let name = format!("t{i}");
                let d = gpu.read_state("prev_direction", &name).unwrap();
                for ((&g, &p), &d) in grads[i].iter().zip(&params[i]).zip(&d) {
                    let g = if wd != 0.0 { g + wd * p } else { g };
                    h += g as f64 * d as f64;
                }
            }
            let before = gpu.read_learned_lr().unwrap().unwrap();
            if k == 2 {
                // A multiplicative schedule restarts every group from base lr * factor.
                gpu.set_lr_factor(0.5).unwrap();
                cpu.set_lr_factor(0.5).unwrap();
                let now = gpu.read_learned_lr().unwrap().unwrap();
                let want = [(cfg.lr() * 0.5) as f32, (cfg.lr() * 0.25) as f32];
                assert_eq!(now, want, "{what}");
            }
            if k == 5 {
                gpu.set_group_lr(0, reset).unwrap();
                cpu.set_group_lr(0, reset).unwrap();
                // Visible at once as the lr the next step starts from; group 1 untouched.
                let now = gpu.read_learned_lr().unwrap().unwrap();
                assert_eq!(now[0], reset as f32, "{what}");
                assert_eq!(now[1].to_bits(), before[1].to_bits(), "{what}");
                assert_eq!(cpu.read_learned_lr().unwrap().unwrap(), now, "{what}");
                assert_eq!(gpu.group_lr(0).unwrap(), reset);
            }
            arena.write_all_grads(&grads).unwrap();
            gpu.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let lg = gpu.read_learned_lr().unwrap().unwrap();
            let lc = cpu.read_learned_lr().unwrap().unwrap();
            assert_twin(&ctx, &format!("{what} step {k} learned lr"), &lg, &lc);
            // alpha_t = alpha_{t-1} + beta h, where alpha_{t-1} is the reset value at step 5.
            let start = match k {
                2 => (cfg.lr() * 0.5) as f32 as f64,
                5 => reset as f32 as f64,
                _ => before[0] as f64,
            };
            let want = start + beta0 * h;
            let tol = 1e-6 * (start.abs() + (beta0 * h).abs()) + 1e-9;
            assert!(
                (lg[0] as f64 - want).abs() <= tol,
                "{what} step {k}: learned lr {} want {want} (from {start}, beta h {})",
                lg[0],
                beta0 * h
            );
            if k >= 1 {
                assert!(beta0 * h != 0.0, "{what} step {k}: no hypergradient");
            }
        }
        let got = arena.read_all_params().unwrap();
        for (i, (g, c)) in got.iter().zip(&params).enumerate() {
            assert_twin(&ctx, &format!("{what} t{i} param"), g, c);
        }
    }
}

/// A checkpoint's learned lrs written back: a fresh optimizer continues from them exactly as
/// the CPU twin given the same values does, and as the original would.
#[test]
fn learned_lr_round_trips_through_a_checkpoint() {
    let Some(ctx) = gpu() else { return };
    let lens = [5000, 77, 1];
    let specs = specs(&lens);
    let mut rng = fastrand::Rng::with_seed(8);
    for cfg in hd_configs() {
        let what = cfg.name();
        let groups = two_groups(&cfg, HdScope::Group);
        let p0: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        let grads: Vec<Vec<Vec<f32>>> = (0..4)
            .map(|_| lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect())
            .collect();
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&p0).unwrap();
        let mut a = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
        for g in &grads {
            arena.write_all_grads(g).unwrap();
            a.step(&arena).unwrap();
        }
        let saved = a.read_learned_lr().unwrap().unwrap();
        assert!(saved[0] != cfg.lr() as f32, "{what}: nothing learned");
        // A fresh optimizer takes the saved lrs: before any step they are what it reports, and
        // its first step starts from them (not from the configured lr).
        let arena2 = ParamArena::new(&ctx, &specs).unwrap();
        arena2.write_all_params(&p0).unwrap();
        let mut b = Optimizer::with_groups(&ctx, &arena2, groups.clone()).unwrap();
        b.write_learned_lr(&saved).unwrap();
        assert_eq!(b.read_learned_lr().unwrap().unwrap(), saved, "{what}");
        let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
        cpu.write_learned_lr(&saved).unwrap();
        assert_eq!(cpu.read_learned_lr().unwrap().unwrap(), saved, "{what}");
        let mut p = p0.clone();
        arena2.write_all_grads(&grads[0]).unwrap();
        b.step(&arena2).unwrap();
        cpu.step(&mut p, &grads[0]).unwrap();
        // The first step's hypergradient is 0 (no direction yet): the step ran at `saved`.
        let after = b.read_learned_lr().unwrap().unwrap();
        assert_eq!(after, saved, "{what}");
        assert_twin(
            &ctx,
            &format!("{what} learned lr"),
            &after,
            &cpu.read_learned_lr().unwrap().unwrap(),
        );
        for (i, (g, c)) in arena2.read_all_params().unwrap().iter().zip(&p).enumerate() {
            assert_twin(&ctx, &format!("{what} t{i} param"), g, c);
        }
    }
}

#[test]
fn bad_learned_lr_writes_are_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let specs = specs(&[10, 20]);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let cfg = SgdHdConfig::default();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let before = opt.read_learned_lr().unwrap().unwrap();
    for bad in [vec![0.1f32], vec![0.1, 0.2, 0.3]] {
        assert!(matches!(
            opt.write_learned_lr(&bad),
            Err(Error::LengthMismatch { expected: 2, .. })
        ));
        assert!(matches!(
            cpu.write_learned_lr(&bad),
            Err(Error::LengthMismatch { expected: 2, .. })
        ));
    }
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(matches!(
            opt.write_learned_lr(&[0.1, v]),
            Err(Error::InvalidHyperparameter {
                name: "learned lr",
                ..
            })
        ));
        assert!(matches!(
            cpu.write_learned_lr(&[v, 0.1]),
            Err(Error::InvalidHyperparameter { .. })
        ));
    }
    // Nothing changed.
    assert_eq!(opt.read_learned_lr().unwrap().unwrap(), before);
    // A negative learned lr is allowed (the reference code does not clamp it).
    opt.write_learned_lr(&[-0.5, 0.25]).unwrap();
    assert_eq!(opt.read_learned_lr().unwrap().unwrap(), vec![-0.5, 0.25]);
    // Optimizers that learn no lr.
    let mut plain = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    assert_eq!(plain.read_learned_lr().unwrap(), None);
    assert!(matches!(
        plain.write_learned_lr(&[0.1, 0.1]),
        Err(Error::Unsupported(_))
    ));
    let mut plain_cpu = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    assert_eq!(plain_cpu.read_learned_lr().unwrap(), None);
    assert!(matches!(
        plain_cpu.write_learned_lr(&[0.1, 0.1]),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn invalid_hyperparameters_are_typed_errors() {
    let sgd = SgdHdConfig::default();
    let adam = AdamHdConfig::default();
    let bad_sgd: Vec<(&str, SgdHdConfig)> = vec![
        (
            "lr",
            SgdHdConfig {
                lr: -1e-3,
                ..sgd.clone()
            },
        ),
        (
            "lr",
            SgdHdConfig {
                lr: f64::NAN,
                ..sgd.clone()
            },
        ),
        (
            "hypergrad_lr",
            SgdHdConfig {
                hypergrad_lr: -1e-6,
                ..sgd.clone()
            },
        ),
        (
            "hypergrad_lr",
            SgdHdConfig {
                hypergrad_lr: f64::NAN,
                ..sgd.clone()
            },
        ),
        (
            "hypergrad_lr",
            SgdHdConfig {
                hypergrad_lr: f64::INFINITY,
                ..sgd.clone()
            },
        ),
        (
            "momentum",
            SgdHdConfig {
                momentum: -0.5,
                ..sgd.clone()
            },
        ),
        (
            "weight_decay",
            SgdHdConfig {
                weight_decay: -1.0,
                ..sgd.clone()
            },
        ),
        (
            "dampening",
            SgdHdConfig {
                dampening: f64::NAN,
                ..sgd.clone()
            },
        ),
    ];
    let bad_adam: Vec<(&str, AdamHdConfig)> = vec![
        (
            "lr",
            AdamHdConfig {
                lr: -1.0,
                ..adam.clone()
            },
        ),
        (
            "hypergrad_lr",
            AdamHdConfig {
                hypergrad_lr: -1e-8,
                ..adam.clone()
            },
        ),
        (
            "hypergrad_lr",
            AdamHdConfig {
                hypergrad_lr: f64::INFINITY,
                ..adam.clone()
            },
        ),
        (
            "beta1",
            AdamHdConfig {
                beta1: 1.0,
                ..adam.clone()
            },
        ),
        (
            "beta2",
            AdamHdConfig {
                beta2: -0.1,
                ..adam.clone()
            },
        ),
        (
            "eps",
            AdamHdConfig {
                eps: -1e-8,
                ..adam.clone()
            },
        ),
        (
            "weight_decay",
            AdamHdConfig {
                weight_decay: f64::NAN,
                ..adam.clone()
            },
        ),
    ];
    let cases: Vec<(&str, OptimizerConfig)> = bad_sgd
        .into_iter()
        .map(|(n, c)| (n, c.into()))
        .chain(bad_adam.into_iter().map(|(n, c)| (n, c.into())))
        .collect();
    let specs = specs(&[10, 3]);
    let ctx = gpu();
    for (field, cfg) in &cases {
        let check = |r: Result<(), Error>, side: &str| match r {
            Err(Error::InvalidHyperparameter { name, .. }) => {
                assert_eq!(name, *field, "{side}: {cfg:?}")
            }
            other => panic!("{side}: {cfg:?} gave {other:?}"),
        };
        check(cfg.validate(), "validate");
        check(CpuOptimizer::new(cfg.clone(), &specs).map(|_| ()), "cpu");
        if let Some(ctx) = &ctx {
            let arena = ParamArena::new(ctx, &specs).unwrap();
            check(Optimizer::new(ctx, &arena, cfg.clone()).map(|_| ()), "gpu");
            // set_group_config refuses it and keeps the group's configuration.
            let good: OptimizerConfig = match cfg {
                OptimizerConfig::SgdHd(_) => sgd.clone().into(),
                _ => adam.clone().into(),
            };
            let mut opt = Optimizer::new(ctx, &arena, good.clone()).unwrap();
            check(opt.set_group_config(0, cfg.clone()), "set_group_config");
            assert_eq!(opt.group_config(0).unwrap(), &good);
        }
    }
    // Nesterov without momentum, or with dampening.
    for cfg in [
        SgdHdConfig {
            nesterov: true,
            ..sgd.clone()
        },
        SgdHdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..sgd.clone()
        },
    ] {
        assert!(matches!(
            OptimizerConfig::from(cfg.clone()).validate(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            CpuOptimizer::new(cfg, &specs),
            Err(Error::InvalidConfig(_))
        ));
    }
}

#[test]
fn table_rows_names_and_bytes_per_element() {
    let hd: Vec<OptimizerConfig> = OptimizerConfig::variants()
        .into_iter()
        .filter(|c| c.learns_lr())
        .collect();
    let families: Vec<&str> = hd.iter().map(|c| c.family()).collect();
    assert!(families.contains(&"sgd_hd") && families.contains(&"adam_hd"));
    assert!(hd
        .iter()
        .any(|c| matches!(c, OptimizerConfig::SgdHd(x) if x.nesterov)));
    assert!(hd
        .iter()
        .any(|c| matches!(c, OptimizerConfig::SgdHd(x) if x.scope == HdScope::Group)));
    assert!(hd
        .iter()
        .any(|c| matches!(c, OptimizerConfig::AdamHd(x) if x.scope == HdScope::Group)));
    for name in ["sgd-hd", "sgdn-hd", "adam-hd"] {
        let p = OptimizerConfig::preset(name).unwrap_or_else(|| panic!("preset {name}"));
        assert!(p.learns_lr());
        assert_eq!(p.name(), name);
    }
    // SPEC-2 §5: SGD-HD 24 (pass 1: g, d_prev; update: p, g in, p, d_prev out), the momentum
    // buffer adds its read and write, weight decay the p read of pass 1; Adam-HD 40.
    let b = |c: OptimizerConfig| c.bytes_per_element();
    assert_eq!(b(SgdHdConfig::default().into()), 24);
    let m = SgdHdConfig {
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    };
    assert_eq!(b(m.into()), 32);
    assert_eq!(b(AdamHdConfig::default().into()), 40);
    let wd = AdamHdConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    assert_eq!(b(wd.into()), 44);
    // Three dispatches per step on a one-window arena.
    if let Some(ctx) = gpu() {
        let arena = ParamArena::new(&ctx, &specs(&[5, 6000, 1])).unwrap();
        for cfg in hd_configs() {
            let opt = Optimizer::new(&ctx, &arena, cfg).unwrap();
            assert_eq!(opt.dispatches_per_step(), 3);
            assert_eq!(opt.read_trust_ratios().unwrap(), None);
        }
    }
}

#[test]
fn wgsl_structs_and_flags_match_the_rust_twins() {
    use std::mem::size_of;
    use wgpu_optim::shaders::KernelDef;
    let cases: [(KernelDef, &str, usize); 4] = [
        (
            sgd_hd::SGD_HD_STEP,
            "SgdHdHyper",
            size_of::<sgd_hd::SgdHdHyper>(),
        ),
        (
            sgd_hd::SGD_HD_STEP,
            "SgdHdTensor",
            size_of::<sgd_hd::SgdHdTensor>(),
        ),
        (
            adam_hd::ADAM_HD_STEP,
            "AdamHdHyper",
            size_of::<adam_hd::AdamHdHyper>(),
        ),
        (
            adam_hd::ADAM_HD_STEP,
            "AdamHdTensor",
            size_of::<adam_hd::AdamHdTensor>(),
        ),
    ];
    crate::common::naga_sizes::assert_wgsl_sizes(&cases, true);
    let wgsl_const = |src: &str, name: &str| -> u32 {
        let line = src
            .lines()
            .find(|l| l.starts_with(&format!("const {name}: u32 = ")))
            .unwrap_or_else(|| panic!("no const {name}"));
        let v = line.split('=').nth(1).unwrap().trim().trim_end_matches(';');
        v.trim_end_matches('u').parse().unwrap()
    };
    let s = sgd_hd::SGD_HD_STEP.source;
    let a = adam_hd::ADAM_HD_STEP.source;
    assert_eq!(wgsl_const(s, "HD_MOMENTUM"), sgd_hd::HD_MOMENTUM);
    assert_eq!(wgsl_const(s, "HD_NESTEROV"), sgd_hd::HD_NESTEROV);
    for src in [s, a] {
        assert_eq!(wgsl_const(src, "HD_GLOBAL"), sgd_hd::HD_GLOBAL);
        assert_eq!(wgsl_const(src, "HD_RESET"), sgd_hd::HD_RESET);
    }
    // On lavapipe the parity tests are bit for bit; say which standard this run held.
    if let Some(ctx) = gpu() {
        println!("exact adapter: {}", exact_adapter(&ctx));
    }
}

/// Two hypergradient segments (SGDN-HD and Adam-HD) next to AdamW in one optimizer, under
/// global-norm clipping (applied by the kernels to both the dot and the update): each segment
/// keeps its own dot and learned lr, AdamW's group reports its configured lr, and everything
/// matches the CPU twin stepping on host-clipped gradients (fp32 tolerance: the GPU forms the
/// clip coefficient in f32, the host in f64).
#[test]
fn hypergradient_segments_beside_adamw_under_clipping() {
    use crate::common::{assert_close, ATOL, RTOL};
    use wgpu_optim::norm::cpu_clip_grad_norm;
    use wgpu_optim::{GradClipper, NormType};
    let Some(ctx) = gpu() else { return };
    let lens = [278011, 255, 257, 1, 4097, 64, 300];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let names = |r: usize| -> Vec<String> {
        (0..lens.len())
            .filter(|i| i % 3 == r)
            .map(|i| format!("t{i}"))
            .collect()
    };
    let sgdn = SgdHdConfig {
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        hypergrad_lr: 1e-3,
        ..Default::default()
    };
    let adam_hd = AdamHdConfig {
        lr: 1e-3,
        hypergrad_lr: 1e-5,
        ..Default::default()
    };
    let groups = ParamGroups::new()
        .group(Select::names(names(0)), sgdn)
        .group(Select::names(names(1)), adam_hd)
        .group(Select::Rest, AdamConfig::adamw());
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
    assert_eq!(gpu.segments(), 3);
    let max_norm = 5.0;
    let clip = std::sync::Arc::new(GradClipper::new(&ctx, &arena, max_norm, NormType::L2).unwrap());
    gpu.set_grad_clip(Some(clip)).unwrap();
    let mut rng = fastrand::Rng::with_seed(41);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let states = gpu.state_names();
    let mut grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
    for k in 0..10 {
        for g in &mut grads {
            let noise = randn(&mut rng, g.len(), 0.5);
            for (x, e) in g.iter_mut().zip(noise) {
                *x = 0.7 * *x + e;
            }
        }
        arena.write_all_grads(&grads).unwrap();
        gpu.step(&arena).unwrap();
        let mut clipped = grads.clone();
        cpu_clip_grad_norm(&mut clipped, max_norm, NormType::L2).unwrap();
        cpu.step(&mut params, &clipped).unwrap();
        let w = format!("step {k}");
        let lg = gpu.read_learned_lr().unwrap().unwrap();
        let lc = cpu.read_learned_lr().unwrap().unwrap();
        assert_close(&format!("{w} learned lr"), &lg, &lc, 1e-9, 1e-5);
        assert_eq!(lg[2], AdamConfig::adamw().lr as f32, "{w}: AdamW's lr");
        let got = arena.read_all_params().unwrap();
        for (i, (g, c)) in got.iter().zip(&params).enumerate() {
            assert_close(&format!("{w} t{i} param"), g, c, ATOL, RTOL);
            for st in &states {
                if let Ok(want) = cpu.read_state(st, &format!("t{i}")) {
                    let have = gpu.read_state(st, &format!("t{i}")).unwrap();
                    assert_close(&format!("{w} t{i} {st}"), &have, &want, ATOL, RTOL);
                }
            }
        }
        if k > 0 {
            assert!(lg[0] != 0.01 && lg[1] != 1e-3, "{w}: {lg:?}");
        }
    }
}

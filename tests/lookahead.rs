//! Lookahead (SPEC §2.8, timm's variant SPEC-2 §2.12): the GPU [`Lookahead`] against its CPU
//! twin [`CpuLookahead`] over three sync periods (SGD with momentum, Adam, Adagrad with a
//! non-zero initial accumulator; with and without the inner-state reset; both variants; every
//! tensor or a selection; a tensor frozen across syncs; sizes 1, 255, 257, 278011 and 300 small
//! tensors; every preset of the table; two segments; a windowed arena), comparing params, slow
//! weights, inner state and step counts after every step; the
//! CPU twin against a direct transcription of the formulas; `reset_state` against a fresh
//! optimizer; the checkpoint accessors; and every invalid input's typed error.
//!
//! Tolerance: PyTorch's fp32 defaults (rtol 1.3e-6, atol 1e-5), as tests/gpu_vs_cpu.rs. The
//! sync itself is checked exactly where it must be exact: after a sync the params *are* the
//! slow weights (the kernel stores one value in both).

use crate::common::{assert_close, gpu, gpu_with, randn, ATOL, RTOL};
use wgpu_optim::lookahead::SLOW_STATE;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdagradConfig, AdamConfig, ContextOptions, CpuLookahead, CpuOptimizer, Error, GpuContext,
    GradClipper, Lookahead, LookaheadConfig, LookaheadVariant, NormType, Optimizer,
    OptimizerConfig, ParamArena, ParamGroups, Select, SgdConfig, TensorSpec,
};

fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect()
}

/// 1, 255, 257, 278011, then 300 small tensors (1..=40 elements, some empty).
fn lengths(seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lens = vec![1, 255, 257, 278_011];
    lens.extend((0..300).map(|_| if rng.u8(..) < 8 { 0 } else { rng.usize(1..=40) }));
    lens
}

/// Frozen schedule (1-based steps): tensor 1 at the first two syncs and the step after the
/// first (timm: its slow weights appear only at the third sync), tensor 5 at the second sync
/// (timm: created at the first, stale after the second), tensor 2 between syncs.
fn frozen(step: u64, tensor: usize, k: u64) -> bool {
    match tensor {
        1 => step == k || step == k + 1 || step == 2 * k,
        5 => step == 2 * k,
        2 => step == 2,
        _ => false,
    }
}

fn sgd_momentum() -> OptimizerConfig {
    SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..Default::default()
    }
    .into()
}

fn adam() -> OptimizerConfig {
    AdamConfig {
        lr: 0.01,
        ..Default::default()
    }
    .into()
}

fn adagrad_nonzero_init() -> OptimizerConfig {
    AdagradConfig {
        lr: 0.05,
        initial_accumulator_value: 0.25,
        ..Default::default()
    }
    .into()
}

/// What the GPU-vs-CPU run wraps.
#[derive(Clone, Copy, PartialEq)]
enum Wrap {
    All,
    /// Tensors 1, 3 and every third small tensor.
    Some,
}

fn selection(wrap: Wrap, n: usize) -> Select {
    match wrap {
        Wrap::All => Select::All,
        Wrap::Some => Select::names(
            (0..n)
                .filter(|&i| i == 1 || i == 3 || (i >= 4 && i % 3 == 0))
                .map(|i| format!("t{i}")),
        ),
    }
}

/// Runs the GPU Lookahead and the CPU twin side by side for three sync periods (plus two
/// steps), alternating `step` and `encode_step` on the GPU, with one `sync_now` after the
/// third sync, and compares everything after every step.
fn run_case(ctx: &GpuContext, inner: OptimizerConfig, cfg: LookaheadConfig, wrap: Wrap, seed: u64) {
    let label = inner.describe();
    run_groups(
        ctx,
        &label,
        ParamGroups::new().group(Select::All, inner),
        cfg,
        wrap,
        seed,
    );
}

/// [`run_case`] around an optimizer of several parameter groups.
fn run_groups(
    ctx: &GpuContext,
    label: &str,
    groups: ParamGroups,
    cfg: LookaheadConfig,
    wrap: Wrap,
    seed: u64,
) {
    let what = format!("{label} {cfg:?} wrap={}", wrap == Wrap::All);
    let lens = lengths(seed);
    let n = lens.len();
    let specs = specs(&lens);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
    let arena = ParamArena::new(ctx, &specs).unwrap();
    arena.write_all_params(&params).unwrap();
    let gpu_inner = Optimizer::with_groups(ctx, &arena, groups.clone()).unwrap();
    let mut g = Lookahead::with_selection(ctx, &arena, gpu_inner, cfg, selection(wrap, n)).unwrap();
    let cpu_inner = CpuOptimizer::with_groups(&specs, groups).unwrap();
    let mut c = CpuLookahead::with_selection(cpu_inner, cfg, &params, selection(wrap, n)).unwrap();
    assert_eq!(
        g.slow_layout().members(),
        c.wrapped(),
        "{what}: wrapped tensors"
    );
    // One dispatch syncs every wrapped tensor (one per binding window when they span more
    // than one binding); the slow weights hold those tensors only.
    let windows = g.slow_layout().windows().len();
    assert_eq!(g.dispatches_per_sync(), windows, "{what}");
    if ctx.max_binding_bytes() >= arena.layout().buffer_bytes() {
        assert_eq!(windows, 1, "{what}");
    }
    assert_eq!(
        g.slow_bytes(),
        g.slow_layout().state_bytes().max(16),
        "{what}"
    );
    let wrapped_elems: usize = c
        .wrapped()
        .iter()
        .map(|&i| lens[i].next_multiple_of(4))
        .sum();
    assert_eq!(
        g.slow_layout().state_elements(),
        wrapped_elems as u64,
        "{what}"
    );
    if wrap == Wrap::Some {
        assert!(g.slow_bytes() < arena.layout().buffer_bytes(), "{what}");
    }
    let k = cfg.k;
    let wrapped: Vec<bool> = (0..n).map(|i| c.wrapped().contains(&i)).collect();
    let steps = 3 * k + 2;
    for s in 1..=steps {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        arena.write_all_grads(&grads).unwrap();
        for i in 0..n {
            let f = frozen(s, i, k);
            g.inner_mut().set_frozen(&format!("t{i}"), f).unwrap();
            c.inner_mut().set_frozen(&format!("t{i}"), f).unwrap();
        }
        assert_eq!(g.next_step_syncs(), s % k == 0);
        if s % 2 == 0 {
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            g.encode_step(&mut enc, &arena).unwrap();
            ctx.queue().submit([enc.finish()]);
        } else {
            g.step(&arena).unwrap();
        }
        c.step(&mut params, &grads).unwrap();
        if s == 3 * k + 1 {
            // Outside the schedule: a sync (with the reset when configured), not a step.
            g.sync_now(&arena).unwrap();
            c.sync_now(&mut params).unwrap();
        }
        assert_eq!(g.steps(), s);
        assert_eq!(c.steps(), s);
        let w = format!("{what} step {s}");
        let got = arena.read_all_params().unwrap();
        for i in 0..n {
            assert_close(&format!("{w} t{i} param"), &got[i], &params[i], ATOL, RTOL);
        }
        let slow_image = g.read_slow_image().unwrap();
        let l = g.slow_layout();
        for (local, (&i, &off)) in l.members().iter().zip(l.state_offsets()).enumerate() {
            let name = format!("t{i}");
            let gpu_slow = &slow_image[off..off + lens[i]];
            assert_eq!(
                g.slow_ready()[local],
                c.slow_ready()[local],
                "{w} {name} ready"
            );
            match c.read_slow(&name) {
                Ok(want) => {
                    assert_close(&format!("{w} {name} slow"), gpu_slow, &want, ATOL, RTOL);
                    assert_eq!(g.read_slow(&name).unwrap(), gpu_slow, "{w} {name}");
                }
                Err(e) => {
                    // Only timm lacks slow weights, before a tensor's first sync with a grad.
                    assert_eq!(cfg.variant, LookaheadVariant::Timm, "{w} {name}");
                    let missing = Error::UnknownState {
                        name: SLOW_STATE.into(),
                        available: vec![],
                    };
                    assert_eq!(e, missing, "{w} {name}");
                    assert_eq!(g.read_slow(&name).unwrap_err(), missing, "{w} {name}");
                }
            }
            let synced_now =
                s % k == 0 && !(cfg.variant == LookaheadVariant::Timm && frozen(s, i, k));
            if synced_now && g.slow_ready()[local] {
                // The sync leaves the params equal to the slow weights, exactly.
                assert_eq!(
                    &got[i][..],
                    gpu_slow,
                    "{w} {name}: params = slow after a sync"
                );
            }
        }
        // timm: tensor 1 was frozen at the first two syncs, so its slow weights appear at the
        // third; the paper has them from the start.
        if wrapped[1] {
            let ready1 = c.slow_ready()[c.wrapped().iter().position(|&i| i == 1).unwrap()];
            let want = cfg.variant == LookaheadVariant::Paper || s >= 3 * k;
            assert_eq!(ready1, want, "{w}: t1 slow weights");
        }
        for st in g.inner().state_names() {
            let img = arena
                .layout()
                .unpack(&g.inner().read_state_image(st).unwrap())
                .unwrap();
            let want = c.inner().read_state_all(st);
            for i in 0..n {
                if !want[i].is_empty() {
                    assert_close(&format!("{w} t{i} {st}"), &img[i], &want[i], ATOL, RTOL);
                }
            }
        }
        for (i, &wrapped_i) in wrapped.iter().enumerate() {
            let name = format!("t{i}");
            let steps_taken = c.inner().step_count(&name).unwrap();
            assert_eq!(
                g.inner().step_count(&name).unwrap(),
                steps_taken,
                "{w} {name}"
            );
            if cfg.reset_state && s % k == 0 && wrapped_i {
                assert_eq!(steps_taken, 0, "{w} {name}: reset at the sync");
            }
            if !wrapped_i {
                // Steps not frozen, or none for a tensor in no group.
                let in_group = c.inner().group_of(&name).unwrap().is_some();
                let live = (1..=s).filter(|&x| in_group && !frozen(x, i, k)).count() as u64;
                assert_eq!(steps_taken, live, "{w} {name}: not wrapped, never reset");
            }
        }
    }
}

fn paper(reset: bool) -> LookaheadConfig {
    LookaheadConfig::default().with_reset_state(reset)
}

#[test]
fn sgd_momentum_paper_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    for (j, reset) in [false, true].into_iter().enumerate() {
        for wrap in [Wrap::All, Wrap::Some] {
            run_case(&ctx, sgd_momentum(), paper(reset), wrap, 10 + j as u64);
        }
    }
}

#[test]
fn adam_paper_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    for (j, reset) in [false, true].into_iter().enumerate() {
        for wrap in [Wrap::All, Wrap::Some] {
            run_case(&ctx, adam(), paper(reset), wrap, 20 + j as u64);
        }
    }
}

#[test]
fn sgd_momentum_timm_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    for wrap in [Wrap::All, Wrap::Some] {
        run_case(&ctx, sgd_momentum(), LookaheadConfig::timm(), wrap, 30);
    }
}

#[test]
fn adam_timm_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    for wrap in [Wrap::All, Wrap::Some] {
        run_case(&ctx, adam(), LookaheadConfig::timm(), wrap, 40);
    }
}

#[test]
fn nonzero_initial_state_is_restored_by_the_reset() {
    // Adagrad's accumulator starts at initial_accumulator_value: the reset copies it back
    // (the other rules' states start at zero and are cleared).
    let Some(ctx) = gpu() else { return };
    let cfg = paper(true).with_k(3).with_alpha(0.3);
    run_case(&ctx, adagrad_nonzero_init(), cfg, Wrap::Some, 50);
}

#[test]
fn every_preset_of_the_table_under_lookahead_matches_cpu() {
    // Any optimizer of the library: multi-pass ones (LARS, LAMB), host scalars (NAdam, ASGD),
    // train modes (Schedule-Free), non-zero initial state (Rprop), each under one variant.
    let Some(ctx) = gpu() else { return };
    for (j, p) in OptimizerConfig::presets().into_iter().enumerate() {
        let cfg = match j % 3 {
            0 => paper(true).with_k(2),
            1 => LookaheadConfig::timm().with_k(3).with_alpha(0.8),
            _ => paper(false).with_k(3).with_alpha(0.25),
        };
        let wrap = if j % 2 == 0 { Wrap::All } else { Wrap::Some };
        run_case(&ctx, p.config, cfg, wrap, 100 + j as u64);
    }
}

#[test]
fn two_segments_and_a_tensor_in_no_group_match_cpu() {
    // LAMB on the tensors of odd length, AdamW on the rest but t0, which no group takes: the
    // reset spans two segments' state buffers; t0 is never wrapped.
    let Some(ctx) = gpu() else { return };
    let lens = lengths(70);
    let odd: Vec<String> = (1..lens.len())
        .filter(|&i| lens[i] % 2 == 1)
        .map(|i| format!("t{i}"))
        .collect();
    let even: Vec<String> = (1..lens.len())
        .filter(|&i| lens[i] % 2 == 0)
        .map(|i| format!("t{i}"))
        .collect();
    let lamb = OptimizerConfig::preset("lamb").unwrap();
    let adamw = OptimizerConfig::preset("adamw").unwrap();
    let groups = ParamGroups::new()
        .group(Select::Names(odd), lamb)
        .group(Select::Names(even), adamw);
    for (j, cfg) in [paper(true).with_k(2), LookaheadConfig::timm().with_k(3)]
        .into_iter()
        .enumerate()
    {
        for wrap in [Wrap::All, Wrap::Some] {
            run_groups(&ctx, "lamb+adamw", groups.clone(), cfg, wrap, 70 + j as u64);
        }
    }
}

#[test]
fn windowed_arena_matches_cpu() {
    // 64 KiB bindings: the 278011-element tensor spans 17 windows, each its own dispatch.
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let probe = ParamArena::new(&ctx, &specs(&lengths(60))).unwrap();
    assert!(
        probe.layout().windows().len() > 10,
        "windowing not exercised"
    );
    run_case(&ctx, adam(), paper(true), Wrap::All, 60);
    run_case(
        &ctx,
        sgd_momentum(),
        LookaheadConfig::timm(),
        Wrap::Some,
        61,
    );
}

#[test]
fn a_refused_step_changes_nothing() {
    // A NaN gradient with error_if_nonfinite: the inner step is refused, so no sync either.
    let Some(ctx) = gpu() else { return };
    let specs = specs(&[10, 3]);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let params = vec![vec![0.5f32; 10], vec![-1.0; 3]];
    arena.write_all_params(&params).unwrap();
    let mut inner = Optimizer::new(&ctx, &arena, sgd_momentum()).unwrap();
    let clip = GradClipper::new(&ctx, &arena, 1.0, NormType::L2)
        .unwrap()
        .with_error_if_nonfinite(true);
    inner
        .set_grad_clip(Some(std::sync::Arc::new(clip)))
        .unwrap();
    let mut la = Lookahead::new(&ctx, &arena, inner, paper(true).with_k(1)).unwrap();
    let before = la.read_slow_image().unwrap();
    arena
        .write_all_grads(&[vec![f32::NAN; 10], vec![1.0; 3]])
        .unwrap();
    assert!(matches!(la.step(&arena), Err(Error::NonFiniteNorm { .. })));
    assert_eq!(la.steps(), 0);
    assert_eq!(la.inner().step_count("t0").unwrap(), 0);
    assert_eq!(arena.read_all_params().unwrap(), params);
    assert_eq!(la.read_slow_image().unwrap(), before);
    // And with finite gradients the same Lookahead steps and syncs.
    arena
        .write_all_grads(&[vec![0.1; 10], vec![1.0; 3]])
        .unwrap();
    la.step(&arena).unwrap();
    assert_eq!(la.steps(), 1);
    let p = arena.read_all_params().unwrap();
    assert_ne!(p, params);
    assert_eq!(la.read_slow("t0").unwrap(), p[0]);
    // The reset after the sync: the next step is the tensors' first again.
    assert_eq!(la.inner().step_count("t0").unwrap(), 0);
}

#[test]
fn empty_tensors_only() {
    // A selection of 0-element tensors (PyTorch allows them): no work, no error.
    let Some(ctx) = gpu() else { return };
    let specs = specs(&[0, 5, 0]);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_params("t1", &[1.0; 5]).unwrap();
    let inner = Optimizer::new(&ctx, &arena, sgd_momentum()).unwrap();
    let sel = Select::names(["t0", "t2"]);
    let mut la =
        Lookahead::with_selection(&ctx, &arena, inner, paper(true).with_k(1), sel).unwrap();
    assert_eq!(la.dispatches_per_sync(), 0);
    arena.write_grads("t1", &[1.0; 5]).unwrap();
    la.step(&arena).unwrap();
    la.sync_now(&arena).unwrap();
    assert_eq!(la.read_slow("t0").unwrap(), Vec::<f32>::new());
    assert_eq!(arena.read_params("t1").unwrap(), vec![1.0 - 0.05; 5]);
}

// ---------------------------------------------------------------------------------------------
// The CPU twin against the formulas.

/// SPEC §2.8 / §2.12 written out for SGD with momentum (torch.optim.SGD, dampening 0) on host
/// vectors: `slow` is `None` until timm creates it; `buf` is `None` for a fresh state.
struct Transcription {
    fast: Vec<Vec<f32>>,
    slow: Vec<Option<Vec<f32>>>,
    buf: Vec<Option<Vec<f32>>>,
}

impl Transcription {
    fn step(
        &mut self,
        s: u64,
        grads: &[Vec<f32>],
        frozen: &[bool],
        cfg: &LookaheadConfig,
        lr: f32,
        momentum: f32,
    ) {
        for t in 0..self.fast.len() {
            if frozen[t] {
                continue;
            }
            let g = &grads[t];
            let buf: Vec<f32> = match &self.buf[t] {
                None => g.clone(),
                Some(b) => b.iter().zip(g).map(|(b, g)| momentum * b + g).collect(),
            };
            for (p, d) in self.fast[t].iter_mut().zip(&buf) {
                *p -= lr * d;
            }
            self.buf[t] = Some(buf);
        }
        if s % cfg.k != 0 {
            return;
        }
        let alpha = cfg.alpha as f32;
        for (t, &fz) in frozen.iter().enumerate() {
            if cfg.variant == LookaheadVariant::Timm && fz {
                continue;
            }
            let slow = self.slow[t].get_or_insert_with(|| self.fast[t].clone());
            for (phi, theta) in slow.iter_mut().zip(self.fast[t].iter_mut()) {
                *phi += alpha * (*theta - *phi);
                *theta = *phi;
            }
            if cfg.reset_state {
                self.buf[t] = None;
            }
        }
    }
}

#[test]
fn cpu_twin_follows_the_formulas() {
    let (lr, momentum) = (0.1f32, 0.9f32);
    let lens = [3usize, 2, 5];
    let specs = specs(&lens);
    let cases = [
        paper(false),
        paper(true),
        LookaheadConfig::timm().with_k(2).with_alpha(0.7),
        LookaheadConfig::default().with_k(1).with_alpha(1.0),
        LookaheadConfig::default().with_k(3).with_alpha(0.0),
    ];
    for (ci, cfg) in cases.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(ci as u64);
        let init: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        let mut t = Transcription {
            fast: init.clone(),
            slow: init
                .iter()
                .map(|p| (cfg.variant == LookaheadVariant::Paper).then(|| p.clone()))
                .collect(),
            buf: vec![None; lens.len()],
        };
        let inner = CpuOptimizer::new(
            SgdConfig {
                lr: lr as f64,
                momentum: momentum as f64,
                ..Default::default()
            },
            &specs,
        )
        .unwrap();
        let mut params = init.clone();
        let mut la = CpuLookahead::new(inner, *cfg, &params).unwrap();
        let mut moved = false;
        for s in 1..=3 * cfg.k + 2 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
            // Tensor 1 frozen at the first sync and the step before it.
            let fz: Vec<bool> = (0..lens.len())
                .map(|i| i == 1 && (s == cfg.k || s + 1 == cfg.k))
                .collect();
            for (i, &f) in fz.iter().enumerate() {
                la.inner_mut().set_frozen(&format!("t{i}"), f).unwrap();
            }
            let before = t.fast.clone();
            t.step(s, &grads, &fz, cfg, lr, momentum);
            la.step(&mut params, &grads).unwrap();
            let w = format!("case {ci} step {s}");
            for i in 0..lens.len() {
                let name = format!("t{i}");
                assert_close(
                    &format!("{w} {name} param"),
                    &params[i],
                    &t.fast[i],
                    1e-7,
                    1e-6,
                );
                match &t.slow[i] {
                    Some(want) => assert_close(
                        &format!("{w} {name} slow"),
                        &la.read_slow(&name).unwrap(),
                        want,
                        1e-7,
                        1e-6,
                    ),
                    None => assert!(la.read_slow(&name).is_err(), "{w} {name}"),
                }
                let buf = la.inner().read_state("momentum_buffer", &name).unwrap();
                let want = t.buf[i].clone().unwrap_or_else(|| vec![0.0; lens[i]]);
                assert_close(&format!("{w} {name} buf"), &buf, &want, 1e-7, 1e-6);
            }
            moved |= t.fast != before;
        }
        assert!(moved, "case {ci}");
    }
}

#[test]
fn alpha_one_is_the_inner_optimizer_and_alpha_zero_goes_back() {
    // alpha = 1: the sync leaves the fast weights; alpha = 0 (paper): back to the initial ones.
    let specs = specs(&[7, 4]);
    let mut rng = fastrand::Rng::with_seed(3);
    let init: Vec<Vec<f32>> = [7, 4].iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
    let grads: Vec<Vec<f32>> = [7, 4].iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
    let cfg = adam();
    let mut plain = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p_plain = init.clone();
    let mut one = CpuLookahead::new(
        CpuOptimizer::new(cfg.clone(), &specs).unwrap(),
        paper(false).with_alpha(1.0),
        &init,
    )
    .unwrap();
    let mut p_one = init.clone();
    let mut zero = CpuLookahead::new(
        CpuOptimizer::new(cfg, &specs).unwrap(),
        paper(false).with_alpha(0.0).with_k(4),
        &init,
    )
    .unwrap();
    let mut p_zero = init.clone();
    for _ in 0..4 {
        plain.step(&mut p_plain, &grads).unwrap();
        one.step(&mut p_one, &grads).unwrap();
        zero.step(&mut p_zero, &grads).unwrap();
    }
    // phi + 1 * (theta - phi) is theta up to one rounding.
    for (a, b) in p_one.iter().zip(&p_plain) {
        assert_close("alpha 1", a, b, 1e-7, 1e-6);
    }
    assert_eq!(p_zero, init);
    assert_ne!(p_plain, init);
}

// ---------------------------------------------------------------------------------------------
// State reset, checkpoint accessors, errors.

#[test]
fn reset_state_equals_a_fresh_optimizer() {
    let Some(ctx) = gpu() else { return };
    let lens = [1usize, 255, 257, 5000];
    let specs = specs(&lens);
    for cfg in [adagrad_nonzero_init(), adam(), sgd_momentum()] {
        let mut rng = fastrand::Rng::with_seed(7);
        let init: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
        let grads: Vec<Vec<Vec<f32>>> = (0..5)
            .map(|_| lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect())
            .collect();
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let mut p = init.clone();
        for g in &grads[..3] {
            arena.write_all_grads(g).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut p, g).unwrap();
        }
        opt.reset_state().unwrap();
        cpu.reset_state();
        let fresh_arena = ParamArena::new(&ctx, &specs).unwrap();
        fresh_arena
            .write_all_params(&arena.read_all_params().unwrap())
            .unwrap();
        let mut fresh = Optimizer::new(&ctx, &fresh_arena, cfg.clone()).unwrap();
        let mut fresh_cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let mut fresh_p = p.clone();
        for t in 0..lens.len() {
            let name = format!("t{t}");
            assert_eq!(opt.step_count(&name).unwrap(), 0);
            assert_eq!(cpu.step_count(&name).unwrap(), 0);
            for st in opt.tensor_state_names(&name).unwrap() {
                let want = fresh.read_state(st, &name).unwrap();
                assert_eq!(opt.read_state(st, &name).unwrap(), want, "{name} {st}");
                assert_eq!(cpu.read_state(st, &name).unwrap(), want, "{name} {st}");
            }
        }
        for g in &grads[3..] {
            arena.write_all_grads(g).unwrap();
            fresh_arena.write_all_grads(g).unwrap();
            opt.step(&arena).unwrap();
            fresh.step(&fresh_arena).unwrap();
            cpu.step(&mut p, g).unwrap();
            fresh_cpu.step(&mut fresh_p, g).unwrap();
        }
        assert_eq!(
            arena.read_all_params().unwrap(),
            fresh_arena.read_all_params().unwrap()
        );
        assert_eq!(p, fresh_p);
    }
}

#[test]
fn checkpoint_accessors_restore_a_run() {
    let Some(ctx) = gpu() else { return };
    let lens = [300usize, 2, 9000];
    let specs = specs(&lens);
    let mut rng = fastrand::Rng::with_seed(11);
    let init: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..10)
        .map(|_| lens.iter().map(|&l| randn(&mut rng, l, 1.0)).collect())
        .collect();
    let cfg = LookaheadConfig::timm().with_k(3);
    let build = |arena: &ParamArena| {
        let inner = Optimizer::new(&ctx, arena, sgd_momentum()).unwrap();
        Lookahead::with_selection(&ctx, arena, inner, cfg, Select::names(["t0", "t2"])).unwrap()
    };
    let a = ParamArena::new(&ctx, &specs).unwrap();
    a.write_all_params(&init).unwrap();
    let mut la = build(&a);
    // t2 frozen at the first sync: timm creates its slow weights at the second.
    for (s, g) in grads[..4].iter().enumerate() {
        la.inner_mut().set_frozen("t2", s == 2).unwrap();
        a.write_all_grads(g).unwrap();
        la.step(&a).unwrap();
    }
    la.inner_mut().set_frozen("t2", false).unwrap();
    assert_eq!(la.slow_ready(), [true, false]);
    // Restore into a new run: params, slow weights, readiness, counter. The inner optimizer's
    // state is restored by running it the same way (its own checkpointing is not this test's).
    let b = ParamArena::new(&ctx, &specs).unwrap();
    b.write_all_params(&init).unwrap();
    let mut lb = build(&b);
    for (s, g) in grads[..4].iter().enumerate() {
        lb.inner_mut().set_frozen("t2", s == 2).unwrap();
        b.write_all_grads(g).unwrap();
        lb.inner_mut().step(&b).unwrap();
    }
    lb.inner_mut().set_frozen("t2", false).unwrap();
    b.write_all_params(&a.read_all_params().unwrap()).unwrap();
    lb.write_slow_image(&la.read_slow_image().unwrap()).unwrap();
    lb.set_slow_ready(la.slow_ready()).unwrap();
    lb.set_steps(la.steps());
    for g in &grads[4..] {
        a.write_all_grads(g).unwrap();
        b.write_all_grads(g).unwrap();
        la.step(&a).unwrap();
        lb.step(&b).unwrap();
    }
    assert_eq!(a.read_all_params().unwrap(), b.read_all_params().unwrap());
    assert_eq!(la.read_slow_image().unwrap(), lb.read_slow_image().unwrap());
    assert_eq!(lb.slow_ready(), [true, true]);
    assert_eq!(lb.steps(), 10);
}

#[test]
fn invalid_inputs_are_typed_errors_and_change_nothing() {
    for (cfg, name) in [
        (paper(false).with_alpha(-0.1), "alpha"),
        (paper(false).with_alpha(1.5), "alpha"),
        (paper(false).with_alpha(f64::NAN), "alpha"),
        (paper(false).with_k(0), "k"),
    ] {
        assert!(
            matches!(cfg.validate(), Err(Error::InvalidHyperparameter { name: n, .. }) if n == name),
            "{cfg:?}"
        );
    }
    let timm_reset = LookaheadConfig::timm().with_reset_state(true);
    assert!(matches!(
        timm_reset.validate(),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(LookaheadConfig::default(), LookaheadConfig::paper());
    assert_eq!(
        (LookaheadConfig::default().k, LookaheadConfig::timm().k),
        (5, 6)
    );

    let lens = [4usize, 6, 3];
    let specs = specs(&lens);
    let params: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.5; l]).collect();
    // t2 is in no parameter group: never updated, so never wrapped.
    let groups =
        || wgpu_optim::ParamGroups::new().group(Select::names(["t0", "t1"]), SgdConfig::default());
    let cpu = || CpuOptimizer::with_groups(&specs, groups()).unwrap();
    let bad_cpu = |cfg: LookaheadConfig, sel: Select| {
        CpuLookahead::with_selection(cpu(), cfg, &params, sel).unwrap_err()
    };
    assert!(matches!(
        bad_cpu(paper(false).with_k(0), Select::All),
        Error::InvalidHyperparameter { .. }
    ));
    assert!(matches!(
        bad_cpu(timm_reset, Select::All),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad_cpu(paper(false), Select::Rest),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad_cpu(paper(false), Select::names(["t2"])),
        Error::InvalidConfig(_)
    ));
    assert_eq!(
        bad_cpu(paper(false), Select::names(["nope"])),
        Error::UnknownTensor("nope".into())
    );
    let short = vec![vec![0.5; 4], vec![0.5; 6]];
    assert!(matches!(
        CpuLookahead::new(cpu(), paper(false), &short).unwrap_err(),
        Error::LengthMismatch { .. }
    ));
    let mut c = CpuLookahead::new(cpu(), paper(false), &params).unwrap();
    assert_eq!(c.wrapped(), [0, 1]);
    assert_eq!(
        c.read_slow("t2").unwrap_err(),
        Error::NotWrapped("t2".into())
    );
    assert!(matches!(
        c.write_slow("t0", &[1.0]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        c.set_slow_ready(&[true]),
        Err(Error::LengthMismatch { .. })
    ));
    let mut p = params.clone();
    let bad_grads = vec![vec![0.0; 4], vec![0.0; 5], vec![0.0; 3]];
    assert!(matches!(
        c.step(&mut p, &bad_grads),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(c.steps(), 0);
    assert_eq!(p, params);

    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_all_params(&params).unwrap();
    let inner = || Optimizer::with_groups(&ctx, &arena, groups()).unwrap();
    let bad_gpu = |cfg: LookaheadConfig, sel: Select| {
        Lookahead::with_selection(&ctx, &arena, inner(), cfg, sel).unwrap_err()
    };
    assert!(matches!(
        bad_gpu(paper(false).with_alpha(2.0), Select::All),
        Error::InvalidHyperparameter { .. }
    ));
    assert!(matches!(
        bad_gpu(timm_reset, Select::All),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad_gpu(paper(false), Select::Rest),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        bad_gpu(paper(false), Select::names(["t2"])),
        Error::InvalidConfig(_)
    ));
    assert_eq!(
        bad_gpu(paper(false), Select::names(["nope"])),
        Error::UnknownTensor("nope".into())
    );
    let other = ParamArena::new(&ctx, &specs).unwrap();
    assert!(matches!(
        Lookahead::new(&ctx, &other, inner(), paper(false)).unwrap_err(),
        Error::ArenaMismatch { .. }
    ));
    let mut g = Lookahead::new(&ctx, &arena, inner(), LookaheadConfig::timm().with_k(1)).unwrap();
    assert_eq!(
        g.read_slow("t2").unwrap_err(),
        Error::NotWrapped("t2".into())
    );
    assert_eq!(
        g.read_slow("nope").unwrap_err(),
        Error::UnknownTensor("nope".into())
    );
    assert!(matches!(g.read_slow("t0"), Err(Error::UnknownState { .. })));
    assert!(matches!(
        g.write_slow_image(&[0.0; 3]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        g.set_slow_ready(&[true; 3]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(g.step(&other), Err(Error::ArenaMismatch { .. })));
    assert!(matches!(
        g.sync_now(&other),
        Err(Error::ArenaMismatch { .. })
    ));
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    assert!(matches!(
        g.encode_step(&mut enc, &other),
        Err(Error::ArenaMismatch { .. })
    ));
    assert_eq!(g.steps(), 0);
    assert_eq!(g.slow_ready(), [false, false]);
    assert_eq!(arena.read_all_params().unwrap(), params);
}

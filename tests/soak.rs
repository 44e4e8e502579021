//! The hot path allocates nothing: after the first step, repeated steps (plain, with
//! clipping, with the AMP guard, with Lookahead, with a schedule, recorded with encode_step)
//! leave wgpu-core's counts of buffers, bind groups, pipelines and shader modules unchanged.
//! `optbench soak` runs the long version (100 000 steps, resident memory sampled).

mod common;

use std::sync::Arc;

use common::{gpu, randn};
use wgpu_optim::{
    AdamConfig, AmpConfig, CosineAnnealingLR, GradClipper, Lookahead, LookaheadConfig, LrSchedule,
    NormType, Optimizer, OptimizerConfig, ParamArena, ResourceCounts, TensorSpec,
};

fn lasting(c: ResourceCounts) -> (usize, usize, usize, usize) {
    (
        c.buffers,
        c.bind_groups,
        c.compute_pipelines,
        c.shader_modules,
    )
}

#[test]
fn steps_create_no_wgpu_objects() {
    let Some(ctx) = gpu() else { return };
    if ctx.resource_counts().is_none() {
        eprintln!("NOTE: no wgpu-core report on this backend; skipped");
        return;
    }
    let specs: Vec<TensorSpec> = [1usize, 257, 4099, 70_000]
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let mut rng = fastrand::Rng::with_seed(9);
    for cfg in OptimizerConfig::presets().into_iter().map(|p| p.config) {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 0.1)).collect();
        arena.write_all_grads(&grads).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        opt.step(&arena).unwrap();
        ctx.wait().unwrap();
        let before = lasting(ctx.resource_counts().unwrap());
        for _ in 0..20 {
            opt.step(&arena).unwrap();
        }
        ctx.wait().unwrap();
        assert_eq!(
            before,
            lasting(ctx.resource_counts().unwrap()),
            "{}",
            cfg.name()
        );
    }

    // Adam with everything attached, stepped both ways.
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 0.1)).collect();
    arena.write_all_grads(&grads).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
    opt.set_grad_clip(Some(Arc::new(
        GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap(),
    )))
    .unwrap();
    opt.set_amp(&arena, Some(AmpConfig::grad_scaler())).unwrap();
    let mut sched = CosineAnnealingLR::new(&mut opt, 50, 1e-5).unwrap();
    let mut la = Lookahead::new(&ctx, &arena, opt, LookaheadConfig::default()).unwrap();
    let mut round = |la: &mut Lookahead, k: usize| {
        // With the AMP skip a sync step waits for the check, so it is stepped, not encoded.
        if k % 2 == 0 || la.next_step_syncs() {
            la.step(&arena).unwrap();
        } else {
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            la.encode_step(&mut enc, &arena).unwrap();
            ctx.queue().submit([enc.finish()]);
        }
        sched.step(la.inner_mut()).unwrap();
    };
    for k in 0..6 {
        round(&mut la, k);
    }
    la.inner_mut().found_inf().unwrap();
    ctx.wait().unwrap();
    let before = lasting(ctx.resource_counts().unwrap());
    for k in 6..46 {
        round(&mut la, k);
    }
    la.inner_mut().found_inf().unwrap();
    ctx.wait().unwrap();
    assert_eq!(before, lasting(ctx.resource_counts().unwrap()));
}

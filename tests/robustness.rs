//! Regression tests for the inputs users found that panicked, aborted or corrupted state:
//! two live contexts, a dropped context handle, a lost device, huge group indices and tensor
//! sizes, short images and out-of-range reads, a clipper of another arena, bad parameter
//! groups, state of tensors that keep none, and non-finite gradient norms. Each bad call must
//! return its exact typed error and leave params, grads, every state buffer and every step
//! count exactly as they were, bit for bit.

use std::sync::Arc;

use crate::common::{assert_close, gpu, randn, ATOL, RTOL};
use wgpu_optim::arena::{MAX_ARENA_VECS, MAX_GROUP};
use wgpu_optim::norm::cpu_clip_grad_norm;
use wgpu_optim::readback::read_f32;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, CpuOptimizer, Error, GpuContext, GradClipper, NormReducer, NormType, Optimizer,
    OptimizerConfig, ParamArena, ParamGroups, ParamLayout, Select, SgdConfig, TensorSpec,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything a bad call must not change, as raw bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    params: Vec<u32>,
    grads: Vec<u32>,
    states: Vec<(&'static str, Vec<u32>)>,
    steps: Vec<(String, u64)>,
}

fn arena_bits(arena: &ParamArena) -> (Vec<u32>, Vec<u32>) {
    (
        bits(&arena.read_params_image().unwrap()),
        bits(&arena.read_grads_image().unwrap()),
    )
}

fn snapshot(arena: &ParamArena, opt: &Optimizer) -> Snapshot {
    let (params, grads) = arena_bits(arena);
    Snapshot {
        params,
        grads,
        states: opt
            .state_names()
            .into_iter()
            .map(|n| (n, bits(&opt.read_state_image(n).unwrap())))
            .collect(),
        steps: arena
            .layout()
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), opt.step_count(&t.name).unwrap()))
            .collect(),
    }
}

fn group_lrs(opt: &Optimizer) -> Vec<u64> {
    (0..opt.groups())
        .map(|g| opt.group_lr(g).unwrap().to_bits())
        .collect()
}

fn rand_tensors(rng: &mut fastrand::Rng, specs: &[TensorSpec], scale: f32) -> Vec<Vec<f32>> {
    specs.iter().map(|s| randn(rng, s.len, scale)).collect()
}

fn encoder(ctx: &GpuContext) -> wgpu::CommandEncoder {
    ctx.device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("robustness test"),
        })
}

fn is_unsupported(r: Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Unsupported(_)))
}

// ---------------------------------------------------------------------------------------------
// 1. Two live contexts.

#[test]
fn objects_of_two_live_contexts_never_mix() {
    let Some(ctx1) = gpu() else { return };
    let Some(ctx2) = gpu() else { return };
    assert_ne!(ctx1.id(), ctx2.id());
    let specs = [TensorSpec::new("w", 37), TensorSpec::new("b", 5)];
    let mut rng = fastrand::Rng::with_seed(11);
    let arena1 = ParamArena::new(&ctx1, &specs).unwrap();
    let arena2 = ParamArena::new(&ctx2, &specs).unwrap();
    for arena in [&arena1, &arena2] {
        arena
            .write_all_params(&rand_tensors(&mut rng, &specs, 1.0))
            .unwrap();
        arena
            .write_all_grads(&rand_tensors(&mut rng, &specs, 1.0))
            .unwrap();
    }
    let cfg = AdamConfig::default();
    let mut opt1 = Optimizer::new(&ctx1, &arena1, cfg.clone()).unwrap();
    let mut opt2 = Optimizer::new(&ctx2, &arena2, cfg.clone()).unwrap();
    opt1.step(&arena1).unwrap();
    opt2.step(&arena2).unwrap();
    let before1 = snapshot(&arena1, &opt1);
    let before2 = snapshot(&arena2, &opt2);

    // Building on ctx2 over an arena of ctx1.
    assert!(is_unsupported(Optimizer::new(&ctx2, &arena1, cfg.clone())));
    assert!(is_unsupported(Optimizer::with_groups(
        &ctx2,
        &arena1,
        ParamGroups::new().group(Select::names(["w"]), cfg.clone()),
    )));
    assert!(is_unsupported(NormReducer::new(
        &ctx2,
        &arena1,
        wgpu_optim::norm::NormSource::Grads,
        NormType::L2
    )));
    assert!(is_unsupported(NormReducer::new(
        &ctx2,
        &arena1,
        wgpu_optim::norm::NormSource::Params,
        NormType::Inf
    )));
    assert!(is_unsupported(GradClipper::new(
        &ctx2,
        &arena1,
        1.0,
        NormType::L2
    )));

    // Stepping with the arena of the other context.
    let mismatch12 = Error::ArenaMismatch {
        expected: arena1.id(),
        got: arena2.id(),
    };
    assert_eq!(opt1.step(&arena2).unwrap_err(), mismatch12);
    let mut enc = encoder(&ctx1);
    assert_eq!(opt1.encode_step(&mut enc, &arena2).unwrap_err(), mismatch12);
    ctx1.queue().submit([enc.finish()]);
    assert_eq!(
        opt2.step(&arena1).unwrap_err(),
        Error::ArenaMismatch {
            expected: arena2.id(),
            got: arena1.id(),
        }
    );
    // A clipper of the other context's arena.
    let clip2 = Arc::new(GradClipper::new(&ctx2, &arena2, 1.0, NormType::L2).unwrap());
    assert_eq!(opt1.set_grad_clip(Some(clip2)).unwrap_err(), mismatch12);
    assert!(opt1.grad_clip().is_none());

    assert_eq!(snapshot(&arena1, &opt1), before1);
    assert_eq!(snapshot(&arena2, &opt2), before2);

    // Writes through arena1 land in arena1 only.
    let w = randn(&mut rng, 37, 2.0);
    let gb = randn(&mut rng, 5, 2.0);
    arena1.write_params("w", &w).unwrap();
    arena1.write_grads("b", &gb).unwrap();
    assert_eq!(bits(&arena1.read_params("w").unwrap()), bits(&w));
    assert_eq!(bits(&arena1.read_grads("b").unwrap()), bits(&gb));
    assert_eq!(snapshot(&arena2, &opt2), before2);
    // And a step of opt1 moves arena1 only.
    opt1.step(&arena1).unwrap();
    assert_eq!(opt1.step_count("w").unwrap(), 2);
    assert_ne!(bits(&arena1.read_params("w").unwrap()), bits(&w));
    assert_eq!(snapshot(&arena2, &opt2), before2);
}

// ---------------------------------------------------------------------------------------------
// 2. A dropped context handle.

#[test]
fn objects_keep_the_device_alive_after_the_context_is_dropped() {
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 300), TensorSpec::new("b", 7)];
    let cfg = AdamConfig {
        lr: 0.01,
        ..AdamConfig::default()
    };
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let reducer = NormReducer::new(
        &ctx,
        &arena,
        wgpu_optim::norm::NormSource::Params,
        NormType::L2,
    )
    .unwrap();
    drop(ctx);

    let mut rng = fastrand::Rng::with_seed(12);
    let mut params = rand_tensors(&mut rng, &specs, 1.0);
    let grads = rand_tensors(&mut rng, &specs, 1.0);
    for (s, (p, g)) in specs.iter().zip(params.iter().zip(&grads)) {
        arena.write_params(&s.name, p).unwrap();
        arena.write_grads(&s.name, g).unwrap();
    }
    opt.step(&arena).unwrap();
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    cpu.step(&mut params, &grads).unwrap();
    for (i, s) in specs.iter().enumerate() {
        let got = arena.read_params(&s.name).unwrap();
        assert_close(&format!("params {}", s.name), &got, &params[i], ATOL, RTOL);
        for name in opt.state_names() {
            assert_close(
                &format!("{name} {}", s.name),
                &opt.read_state(name, &s.name).unwrap(),
                &cpu.read_state(name, &s.name).unwrap(),
                ATOL,
                RTOL,
            );
        }
        assert_eq!(opt.step_count(&s.name).unwrap(), 1);
    }
    let (per, total) = reducer.compute().unwrap();
    assert_eq!(per.len(), 2);
    assert!(total.is_finite() && total > 0.0);
    arena.context().wait().unwrap();
    // The arena's context still builds new objects.
    Optimizer::new(arena.context(), &arena, SgdConfig::default()).unwrap();
    // The optimizer's state outlives the arena.
    let m = opt.read_state("exp_avg", "w").unwrap();
    drop(arena);
    assert_eq!(bits(&opt.read_state("exp_avg", "w").unwrap()), bits(&m));
}

// ---------------------------------------------------------------------------------------------
// 3. A lost device.

fn assert_lost<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("{what}: expected Err(DeviceLost), got {other:?}"),
    }
}

#[test]
fn every_call_on_a_destroyed_device_is_device_lost() {
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 40), TensorSpec::new("b", 3)];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    let clipper = Arc::new(GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap());
    let mut spare = GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap();
    let reducer = NormReducer::new(
        &ctx,
        &arena,
        wgpu_optim::norm::NormSource::Grads,
        NormType::L2,
    )
    .unwrap();
    opt.set_grad_clip(Some(clipper.clone())).unwrap();
    arena.write_grads("w", &[0.5; 40]).unwrap();
    opt.step(&arena).unwrap();
    ctx.wait().unwrap();
    // Encoders can't be created on a destroyed device; make this one before.
    let mut enc = encoder(&ctx);

    ctx.device().destroy();
    // wgpu runs the lost callback from the next poll once the queue is empty.
    let _ = ctx.device().poll(wgpu::PollType::Poll);

    assert_lost("check_alive", ctx.check_alive());
    assert_lost("ctx.wait", ctx.wait());
    assert_lost("arena.context().wait", arena.context().wait());
    assert_lost("write_params", arena.write_params("w", &[1.0; 40]));
    assert_lost("write_grads", arena.write_grads("b", &[1.0; 3]));
    assert_lost(
        "write_all_params",
        arena.write_all_params(&[vec![1.0; 40], vec![1.0; 3]]),
    );
    assert_lost("read_params", arena.read_params("w"));
    assert_lost("read_grads", arena.read_grads("w"));
    assert_lost("read_params_image", arena.read_params_image());
    assert_lost("read_all_grads", arena.read_all_grads());
    assert_lost("step", opt.step(&arena));
    assert_lost("encode_step", opt.encode_step(&mut enc, &arena));
    assert_lost("set_grad_clip(None)", opt.set_grad_clip(None));
    assert_lost(
        "set_grad_clip(Some)",
        opt.set_grad_clip(Some(clipper.clone())),
    );
    assert_lost("read_state", opt.read_state("exp_avg", "w"));
    assert_lost("read_state_image", opt.read_state_image("exp_avg_sq"));
    assert_lost("ParamArena::new", ParamArena::new(&ctx, &specs));
    assert_lost(
        "Optimizer::new",
        Optimizer::new(&ctx, &arena, AdamConfig::default()),
    );
    assert_lost(
        "GradClipper::new",
        GradClipper::new(&ctx, &arena, 1.0, NormType::L2),
    );
    assert_lost(
        "NormReducer::new",
        NormReducer::new(
            &ctx,
            &arena,
            wgpu_optim::norm::NormSource::Params,
            NormType::L2,
        ),
    );
    assert_lost("NormReducer::compute", reducer.compute());
    assert_lost("clipper.read_total_norm", clipper.read_total_norm());
    assert_lost("set_max_norm", spare.set_max_norm(2.0));
    // The refused step did not count.
    assert_eq!(opt.step_count("w").unwrap(), 1);
    // Dropping everything on a dead device must not panic either.
    drop(enc);
    drop(opt);
    drop(clipper);
    drop(spare);
    drop(reducer);
    drop(arena);
    drop(ctx);
}

// ---------------------------------------------------------------------------------------------
// 4. Huge group indices.

fn assert_group_limit(what: &str, e: Error, group: usize) {
    match e {
        Error::LimitExceeded { value, limit, .. } => {
            assert_eq!(value, group as u64, "{what}");
            assert_eq!(limit, MAX_GROUP as u64, "{what}");
        }
        other => panic!("{what}: expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn huge_group_indices_are_limit_exceeded_on_cpu() {
    for g in [usize::MAX, 1usize << 40, MAX_GROUP + 1] {
        let alone = [TensorSpec::new("a", 4).in_group(g)];
        let second = [TensorSpec::new("a", 4), TensorSpec::new("b", 4).in_group(g)];
        for specs in [&alone[..], &second[..]] {
            let e = CpuOptimizer::new(AdamConfig::default(), specs).unwrap_err();
            assert_group_limit("CpuOptimizer::new", e, g);
            let e = ParamLayout::required_bytes(specs).unwrap_err();
            assert_group_limit("required_bytes", e, g);
        }
    }
    // Explicit groups: at most MAX_GROUP + 1 of them.
    let specs = [TensorSpec::new("a", 4)];
    let mut groups = ParamGroups::new();
    for _ in 0..=MAX_GROUP + 1 {
        groups = groups.group(Select::names(["a"]), SgdConfig::default());
    }
    match CpuOptimizer::with_groups(&specs, groups).unwrap_err() {
        Error::LimitExceeded { value, limit, .. } => {
            assert_eq!(value, MAX_GROUP as u64 + 2);
            assert_eq!(limit, MAX_GROUP as u64 + 1);
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn huge_group_indices_and_unknown_groups_change_nothing() {
    let Some(ctx) = gpu() else { return };
    for g in [usize::MAX, 1usize << 40] {
        let e = ParamArena::new(&ctx, &[TensorSpec::new("a", 4).in_group(g)]).unwrap_err();
        assert_group_limit("ParamArena::new", e, g);
    }
    let specs = [TensorSpec::new("a", 4), TensorSpec::new("b", 9).in_group(1)];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(14);
    arena
        .write_all_params(&rand_tensors(&mut rng, &specs, 1.0))
        .unwrap();
    arena
        .write_all_grads(&rand_tensors(&mut rng, &specs, 1.0))
        .unwrap();
    let cfg = AdamConfig::default();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    opt.step(&arena).unwrap();
    let before = snapshot(&arena, &opt);
    let lrs = group_lrs(&opt);
    let unknown = |group| Error::UnknownGroup { group, groups: 2 };
    for g in [usize::MAX, 1 << 40, 7, 2] {
        assert_eq!(opt.set_group_lr(g, 0.1).unwrap_err(), unknown(g));
        assert_eq!(opt.group_config(g).unwrap_err(), unknown(g));
        assert_eq!(opt.group_lr(g).unwrap_err(), unknown(g));
        assert_eq!(opt.base_lr(g).unwrap_err(), unknown(g));
        assert_eq!(
            opt.set_group_config(g, cfg.clone()).unwrap_err(),
            unknown(g)
        );
        assert_eq!(cpu.set_group_lr(g, 0.1).unwrap_err(), unknown(g));
        assert_eq!(cpu.group_config(g).unwrap_err(), unknown(g));
        assert_eq!(
            cpu.set_group_config(g, cfg.clone()).unwrap_err(),
            unknown(g)
        );
    }
    assert_eq!(group_lrs(&opt), lrs);
    assert_eq!(snapshot(&arena, &opt), before);
    assert_eq!(opt.step_count("a").unwrap(), 1);
    assert_eq!(cpu.step_count("b").unwrap(), 0);
    assert_eq!(cpu.group_lr(1).unwrap(), cfg.lr);
}

// ---------------------------------------------------------------------------------------------
// 5. Huge and inconsistent tensor specs.

fn assert_arena_limit(what: &str, e: Error) {
    match e {
        Error::LimitExceeded { value, limit, .. } => {
            assert_eq!(limit, MAX_ARENA_VECS, "{what}");
            assert!(value > limit, "{what}: {value} <= {limit}");
        }
        other => panic!("{what}: expected LimitExceeded, got {other:?}"),
    }
}

/// Specs over the library's u32 vec4 bound, each with a description.
fn over_the_u32_bound() -> Vec<(&'static str, Vec<TensorSpec>)> {
    vec![
        ("2^44 elements", vec![TensorSpec::new("huge", 1usize << 44)]),
        (
            "usize::MAX elements",
            vec![TensorSpec::new("huge", usize::MAX)],
        ),
        (
            "two tensors under the bound whose sum is over it",
            vec![
                TensorSpec::new("a", 1usize << 33),
                TensorSpec::new("b", (1usize << 33) + 4),
            ],
        ),
        (
            "two tensors of 2^63 elements (their usize sum overflows)",
            vec![
                TensorSpec::new("a", usize::MAX / 2 + 1),
                TensorSpec::new("b", usize::MAX / 2 + 1),
            ],
        ),
        (
            "a small tensor after a huge one",
            vec![TensorSpec::new("a", usize::MAX), TensorSpec::new("b", 4)],
        ),
    ]
}

fn shape_mismatch_w() -> Error {
    Error::ShapeMismatch {
        tensor: "w".into(),
        shape: vec![2, 2],
        product: 4,
        len: 6,
    }
}

#[test]
fn oversized_and_inconsistent_specs_are_rejected_on_cpu() {
    for (what, specs) in over_the_u32_bound() {
        assert_arena_limit(
            what,
            CpuOptimizer::new(AdamConfig::default(), &specs).unwrap_err(),
        );
        assert_arena_limit(what, ParamLayout::required_bytes(&specs).unwrap_err());
        assert_arena_limit(what, ParamLayout::new(&specs, 1 << 30, 256).unwrap_err());
    }
    // The bound itself is accepted by the size check (nothing is allocated by it).
    let at_bound = [TensorSpec::new("a", (MAX_ARENA_VECS * 4) as usize)];
    assert_eq!(
        ParamLayout::required_bytes(&at_bound).unwrap(),
        MAX_ARENA_VECS * 16
    );
    let one_over = [TensorSpec::new("a", (MAX_ARENA_VECS * 4) as usize + 1)];
    assert_arena_limit(
        "one over",
        ParamLayout::required_bytes(&one_over).unwrap_err(),
    );

    let bad_shape = [TensorSpec::new("w", 6).with_shape(&[2, 2])];
    assert_eq!(
        CpuOptimizer::new(AdamConfig::default(), &bad_shape).unwrap_err(),
        shape_mismatch_w()
    );
    assert_eq!(
        ParamLayout::required_bytes(&bad_shape).unwrap_err(),
        shape_mismatch_w()
    );
    // A shape whose product overflows: saturated to u64::MAX in the error.
    let overflow = [TensorSpec::new("w", 8).with_shape(&[usize::MAX, 2])];
    assert_eq!(
        CpuOptimizer::new(AdamConfig::default(), &overflow).unwrap_err(),
        Error::ShapeMismatch {
            tensor: "w".into(),
            shape: vec![usize::MAX, 2],
            product: u64::MAX,
            len: 8,
        }
    );
    for shape in [
        &[usize::MAX, 2][..],
        &[1 << 32, 1 << 32],
        &[1 << 40, 1 << 10],
    ] {
        let specs = [TensorSpec::shaped("w", shape)];
        let e = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap_err();
        assert!(
            matches!(e, Error::LimitExceeded { .. } | Error::ShapeMismatch { .. }),
            "{shape:?}: {e:?}"
        );
    }
}

#[test]
fn oversized_and_inconsistent_specs_are_rejected_on_gpu() {
    let Some(ctx) = gpu() else { return };
    for (what, specs) in over_the_u32_bound() {
        assert_arena_limit(what, ParamArena::new(&ctx, &specs).unwrap_err());
    }
    // Just over the device's buffer limit, under the u32 bound.
    let limit = ctx.limits().max_buffer_size;
    let len = (limit / 4 + 1) as usize;
    let specs = [TensorSpec::new("big", len)];
    let bytes = ParamLayout::required_bytes(&specs).unwrap();
    assert!(bytes > limit);
    if bytes <= MAX_ARENA_VECS * 16 {
        assert_eq!(
            ParamArena::new(&ctx, &specs).unwrap_err(),
            Error::BufferTooLarge {
                what: "arena buffer".into(),
                bytes,
                limit,
            }
        );
        // A small tensor after one that fills the device limit on its own.
        let two = [
            TensorSpec::new("a", (limit / 4) as usize & !3),
            TensorSpec::new("b", 4),
        ];
        let bytes = ParamLayout::required_bytes(&two).unwrap();
        assert!(bytes > limit);
        assert_eq!(
            ParamArena::new(&ctx, &two).unwrap_err(),
            Error::BufferTooLarge {
                what: "arena buffer".into(),
                bytes,
                limit,
            }
        );
    } else {
        eprintln!("NOTE: max_buffer_size {limit} is over the u32 vec4 bound; case not reachable");
    }
    let bad_shape = [TensorSpec::new("w", 6).with_shape(&[2, 2])];
    assert_eq!(
        ParamArena::new(&ctx, &bad_shape).unwrap_err(),
        shape_mismatch_w()
    );
    for shape in [&[usize::MAX, 2][..], &[1 << 32, 1 << 32]] {
        let e = ParamArena::new(&ctx, &[TensorSpec::shaped("w", shape)]).unwrap_err();
        assert!(
            matches!(e, Error::LimitExceeded { .. } | Error::ShapeMismatch { .. }),
            "{shape:?}: {e:?}"
        );
    }
    // The context is still usable after all those refusals.
    let arena = ParamArena::new(&ctx, &[TensorSpec::new("ok", 4)]).unwrap();
    arena.write_params("ok", &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(arena.read_params("ok").unwrap(), [1.0, 2.0, 3.0, 4.0]);
}

// ---------------------------------------------------------------------------------------------
// 6. Short images and reads out of range.

#[test]
fn short_images_are_length_mismatch() {
    let specs = [
        TensorSpec::new("a", 3),
        TensorSpec::new("b", 0),
        TensorSpec::new("c", 5),
    ];
    let layout = ParamLayout::new(&specs, 1 << 20, 256).unwrap();
    let total = layout.total_elements() as usize;
    for n in [0, 1, total - 1] {
        assert_eq!(
            layout.unpack(&vec![0.0; n]).unwrap_err(),
            Error::LengthMismatch {
                what: "arena image".into(),
                expected: total,
                got: n,
            }
        );
    }
    assert_eq!(layout.unpack(&vec![0.0; total]).unwrap().len(), 3);
}

#[test]
fn reads_past_the_end_are_out_of_bounds() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &[TensorSpec::new("w", 16)]).unwrap();
    let data: Vec<f32> = (0..16).map(|i| i as f32 + 1.0).collect();
    arena.write_params("w", &data).unwrap();
    let buf = arena.params_buffer();
    let available = buf.size() / 4;
    assert_eq!(available, 16);
    let oob = |offset: u64, len: usize| Error::OutOfBounds {
        what: format!("buffer of {} bytes", buf.size()),
        offset,
        len: len as u64,
        available,
    };
    for (offset, len) in [
        (available - 2, 4),
        (available, 1),
        (available + 1, 0),
        (u64::MAX, 1),
        (u64::MAX, 0),
        (u64::MAX - 2, 4),
        // offset * 4 wraps to 0 in u64: must not read element 0.
        (1 << 62, 4),
        ((1 << 62) + 1, 1),
        (1 << 40, 4),
    ] {
        assert_eq!(
            read_f32(&ctx, buf, offset, len).unwrap_err(),
            oob(offset, len),
            "offset {offset} len {len}"
        );
    }
    assert_eq!(
        read_f32(&ctx, buf, 0, usize::MAX).unwrap_err(),
        oob(0, usize::MAX)
    );
    // In range: exactly the requested elements.
    assert_eq!(read_f32(&ctx, buf, 4, 4).unwrap(), [5.0, 6.0, 7.0, 8.0]);
    assert_eq!(
        read_f32(&ctx, buf, 12, 4).unwrap(),
        [13.0, 14.0, 15.0, 16.0]
    );
    assert!(read_f32(&ctx, buf, available, 0).unwrap().is_empty());
    assert_eq!(bits(&arena.read_params("w").unwrap()), bits(&data));
}

// ---------------------------------------------------------------------------------------------
// 7. A clipper of another arena.

#[test]
fn a_clipper_of_another_arena_keeps_the_old_one_attached() {
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 200), TensorSpec::new("b", 6)];
    let mut rng = fastrand::Rng::with_seed(17);
    let init = rand_tensors(&mut rng, &specs, 1.0);
    let grads1 = rand_tensors(&mut rng, &specs, 1.0);
    let grads2 = rand_tensors(&mut rng, &specs, 1.0);
    let run = |bad: bool| {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init).unwrap();
        arena.write_all_grads(&grads1).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
        let clip = Arc::new(GradClipper::new(&ctx, &arena, 0.5, NormType::L2).unwrap());
        opt.set_grad_clip(Some(clip.clone())).unwrap();
        opt.step(&arena).unwrap();
        if bad {
            let other = ParamArena::new(&ctx, &specs).unwrap();
            let foreign = Arc::new(GradClipper::new(&ctx, &other, 100.0, NormType::Inf).unwrap());
            let before = snapshot(&arena, &opt);
            assert_eq!(
                opt.set_grad_clip(Some(foreign)).unwrap_err(),
                Error::ArenaMismatch {
                    expected: arena.id(),
                    got: other.id(),
                }
            );
            assert!(Arc::ptr_eq(opt.grad_clip().unwrap(), &clip));
            assert_eq!(snapshot(&arena, &opt), before);
        }
        arena.write_all_grads(&grads2).unwrap();
        opt.step(&arena).unwrap();
        let coef = clip.read_coefficient().unwrap();
        assert!(coef < 1.0, "the test needs clipping to be active: {coef}");
        (
            snapshot(&arena, &opt),
            clip.read_total_norm().unwrap().to_bits(),
        )
    };
    let clean = run(false);
    let with_bad = run(true);
    assert_eq!(clean, with_bad);
}

// ---------------------------------------------------------------------------------------------
// 8. Bad parameter groups.

fn group_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::shaped("w", &[8, 8]),
        TensorSpec::new("b", 8),
        TensorSpec::new("e", 16),
    ]
}

/// Adam on "w" (group 0), SGD with momentum and lr 2 on "b" (group 1), AdamW on the rest
/// (group 2): two segments.
fn good_groups() -> ParamGroups {
    ParamGroups::new()
        .group(
            Select::names(["w"]),
            AdamConfig {
                lr: 0.01,
                ..AdamConfig::default()
            },
        )
        .group(
            Select::names(["b"]),
            SgdConfig {
                lr: 2.0,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        )
        .group(Select::Rest, AdamConfig::adamw())
}

/// Constructions that must fail, with the exact error.
fn bad_groups() -> Vec<(ParamGroups, Error)> {
    let adam = AdamConfig::default();
    vec![
        (
            ParamGroups::new()
                .group(Select::names(["w"]), adam.clone())
                .group(Select::All, SgdConfig::default()),
            Error::TensorInTwoGroups {
                tensor: "w".into(),
                first: 0,
                second: 1,
            },
        ),
        (
            ParamGroups::new()
                .group(Select::names(["b"]), adam.clone())
                .group(Select::names(["e", "b"]), adam.clone()),
            Error::TensorInTwoGroups {
                tensor: "b".into(),
                first: 0,
                second: 1,
            },
        ),
        (
            ParamGroups::new().group(Select::names(["w", "nope"]), adam.clone()),
            Error::UnknownTensor("nope".into()),
        ),
        (
            ParamGroups::new()
                .group(Select::Rest, adam.clone())
                .group(Select::Rest, SgdConfig::default()),
            Error::InvalidConfig("at most one parameter group may select the rest"),
        ),
        (
            ParamGroups::new(),
            Error::InvalidConfig("an optimizer needs at least one parameter group"),
        ),
    ]
}

fn assert_hyper(what: &str, r: Result<(), Error>, field: &str) {
    match r {
        Err(Error::InvalidHyperparameter { name, .. }) => assert_eq!(name, field, "{what}"),
        other => panic!("{what}: expected InvalidHyperparameter({field}), got {other:?}"),
    }
}

#[test]
fn bad_param_groups_are_rejected_on_cpu() {
    let specs = group_specs();
    for (groups, want) in bad_groups() {
        assert_eq!(CpuOptimizer::with_groups(&specs, groups).unwrap_err(), want);
    }
    let mut cpu = CpuOptimizer::with_groups(&specs, good_groups()).unwrap();
    let e = cpu.set_group_config(0, SgdConfig::default()).unwrap_err();
    assert_eq!(
        e,
        Error::RuleMismatch {
            group: 0,
            expected: "adam",
            got: "sgd",
        }
    );
    assert_hyper(
        "set_lr_factor(NaN)",
        cpu.set_lr_factor(f64::NAN),
        "lr factor",
    );
    assert_hyper("set_lr_factor(MAX)", cpu.set_lr_factor(f64::MAX), "lr");
    assert_eq!(cpu.group_lr(0).unwrap(), 0.01);
    assert_eq!(cpu.group_lr(1).unwrap(), 2.0);
}

#[test]
fn bad_param_groups_change_nothing() {
    let Some(ctx) = gpu() else { return };
    let specs = group_specs();
    let mut rng = fastrand::Rng::with_seed(18);
    let init = rand_tensors(&mut rng, &specs, 1.0);
    let grads = rand_tensors(&mut rng, &specs, 0.1);
    let run = |bad: bool| {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init).unwrap();
        arena.write_all_grads(&grads).unwrap();
        let mut opt = Optimizer::with_groups(&ctx, &arena, good_groups()).unwrap();
        assert_eq!(opt.segments(), 2);
        opt.step(&arena).unwrap();
        if bad {
            let before = snapshot(&arena, &opt);
            let lrs = group_lrs(&opt);
            let configs: Vec<OptimizerConfig> = (0..opt.groups())
                .map(|g| opt.group_config(g).unwrap().clone())
                .collect();
            let unchanged = |opt: &Optimizer, what: &str| {
                assert_eq!(group_lrs(opt), lrs, "{what}: lr");
                for (g, c) in configs.iter().enumerate() {
                    assert_eq!(opt.group_config(g).unwrap(), c, "{what}: group {g}");
                    assert_eq!(opt.base_lr(g).unwrap(), c.lr(), "{what}: base lr {g}");
                }
                assert_eq!(snapshot(&arena, opt), before, "{what}");
            };
            for (groups, want) in bad_groups() {
                let e = Optimizer::with_groups(&ctx, &arena, groups).unwrap_err();
                assert_eq!(e, want);
                unchanged(&opt, "with_groups");
            }
            let e = opt.set_group_config(0, SgdConfig::default()).unwrap_err();
            assert_eq!(
                e,
                Error::RuleMismatch {
                    group: 0,
                    expected: "adam",
                    got: "sgd",
                }
            );
            unchanged(&opt, "RuleMismatch 0");
            let e = opt.set_group_config(1, AdamConfig::default()).unwrap_err();
            assert_eq!(
                e,
                Error::RuleMismatch {
                    group: 1,
                    expected: "sgd",
                    got: "adam",
                }
            );
            unchanged(&opt, "RuleMismatch 1");
            let e = opt
                .set_group_config(
                    1,
                    SgdConfig {
                        lr: f64::NAN,
                        momentum: 0.9,
                        ..SgdConfig::default()
                    },
                )
                .unwrap_err();
            assert!(
                matches!(e, Error::InvalidHyperparameter { name: "lr", .. }),
                "{e:?}"
            );
            unchanged(&opt, "NaN lr config");
            // A negative factor is a negative lr, which optimizers take as PyTorch's groups do.
            for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert_hyper("set_lr_factor", opt.set_lr_factor(f), "lr factor");
                unchanged(&opt, "set_lr_factor");
            }
            // Finite for group 0 (0.01 * MAX), infinite for group 1 (2 * MAX): checked for
            // every group before any changes.
            assert_hyper("set_lr_factor(MAX)", opt.set_lr_factor(f64::MAX), "lr");
            unchanged(&opt, "set_lr_factor(MAX)");
            assert_hyper("set_group_lr(NaN)", opt.set_group_lr(1, f64::NAN), "lr");
            assert_hyper("set_lr(-inf)", opt.set_lr(f64::NEG_INFINITY), "lr");
            unchanged(&opt, "set_lr");
        }
        opt.step(&arena).unwrap();
        (snapshot(&arena, &opt), group_lrs(&opt))
    };
    let clean = run(false);
    let with_bad = run(true);
    assert_eq!(clean, with_bad);
}

// ---------------------------------------------------------------------------------------------
// 9. State of tensors that keep none.

fn state_groups() -> ParamGroups {
    ParamGroups::new()
        .group(Select::names(["a"]), AdamConfig::default())
        .group(
            Select::names(["s"]),
            SgdConfig {
                momentum: 0.9,
                ..SgdConfig::default()
            },
        )
        .group(Select::names(["t"]), SgdConfig::default())
}

fn unknown_state(name: &str, available: &[&'static str]) -> Error {
    Error::UnknownState {
        name: name.into(),
        available: available.to_vec(),
    }
}

fn state_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("a", 8),
        TensorSpec::new("s", 5),
        TensorSpec::new("t", 6),
        TensorSpec::new("free", 4),
    ]
}

/// What both engines answer for the state of `state_specs()` tensors that keep none: "free"
/// is in no group, "t" is plain SGD (no state), "missing" does not exist. The CPU and GPU
/// optimizers have the same methods, so one macro checks either.
macro_rules! assert_states_missing {
    ($opt:expr) => {{
        let opt = &$opt;
        assert_eq!(
            opt.read_state("exp_avg", "free").unwrap_err(),
            unknown_state("exp_avg", &[])
        );
        assert_eq!(
            opt.read_state("exp_avg", "t").unwrap_err(),
            unknown_state("exp_avg", &[])
        );
        assert_eq!(
            opt.read_state("momentum_buffer", "t").unwrap_err(),
            unknown_state("momentum_buffer", &[])
        );
        assert_eq!(
            opt.read_state("exp_avg", "missing").unwrap_err(),
            Error::UnknownTensor("missing".into())
        );
    }};
}

#[test]
fn state_of_tensors_without_it_is_unknown_state_on_cpu() {
    let specs = state_specs();
    // Adam + plain SGD: two segments, the SGD one without state.
    let two = ParamGroups::new()
        .group(Select::names(["a"]), AdamConfig::default())
        .group(Select::names(["t"]), SgdConfig::default());
    for groups in [two, state_groups()] {
        let cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
        assert_states_missing!(cpu);
        assert_eq!(cpu.read_state("exp_avg", "a").unwrap(), vec![0.0; 8]);
    }
}

#[test]
fn state_of_tensors_without_it_is_unknown_state() {
    let Some(ctx) = gpu() else { return };
    let specs = state_specs();
    let mut rng = fastrand::Rng::with_seed(19);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena
        .write_all_params(&rand_tensors(&mut rng, &specs, 1.0))
        .unwrap();
    arena
        .write_all_grads(&rand_tensors(&mut rng, &specs, 1.0))
        .unwrap();

    // Adam + plain SGD: two segments, the SGD one without state.
    let two = ParamGroups::new()
        .group(Select::names(["a"]), AdamConfig::default())
        .group(Select::names(["t"]), SgdConfig::default());
    let mut opt = Optimizer::with_groups(&ctx, &arena, two).unwrap();
    assert_eq!(opt.segments(), 2);
    opt.step(&arena).unwrap();
    let before = snapshot(&arena, &opt);
    assert_eq!(opt.group_of("free").unwrap(), None);
    assert_states_missing!(opt);
    assert_eq!(
        opt.read_state_image("momentum_buffer").unwrap_err(),
        unknown_state("momentum_buffer", &["exp_avg", "exp_avg_sq"])
    );
    assert_eq!(snapshot(&arena, &opt), before);
    assert_eq!(opt.step_count("free").unwrap(), 0);
    assert_eq!(opt.step_count("t").unwrap(), 1);
    drop(opt);

    // Plain SGD sharing a segment with SGD-momentum: the segment has a momentum buffer, the
    // plain group's tensor does not.
    let mut opt = Optimizer::with_groups(&ctx, &arena, state_groups()).unwrap();
    assert_eq!(opt.segments(), 2);
    opt.step(&arena).unwrap();
    let before = snapshot(&arena, &opt);
    assert_eq!(
        opt.read_state("momentum_buffer", "t").unwrap_err(),
        unknown_state("momentum_buffer", &[])
    );
    assert_eq!(
        opt.read_state("exp_avg", "s").unwrap_err(),
        unknown_state("exp_avg", &["momentum_buffer"])
    );
    assert_eq!(
        opt.read_state("exp_avg", "free").unwrap_err(),
        unknown_state("exp_avg", &[])
    );
    assert_eq!(opt.read_state("momentum_buffer", "s").unwrap().len(), 5);
    assert_eq!(snapshot(&arena, &opt), before);
}

// ---------------------------------------------------------------------------------------------
// 10. Non-finite gradient norms with error_if_nonfinite.

#[test]
fn non_finite_gradients_refuse_the_step_with_error_if_nonfinite() {
    let Some(ctx) = gpu() else { return };
    let specs = [
        TensorSpec::new("w", 300),
        TensorSpec::new("b", 7),
        TensorSpec::new("z", 0),
    ];
    let cfg = AdamConfig::adamw();
    let max_norm = 1.0;
    for norm_type in [NormType::L2, NormType::Inf] {
        let type_name = match norm_type {
            NormType::L2 => "L2",
            NormType::Inf => "inf",
        };
        let mut rng = fastrand::Rng::with_seed(20);
        let mut params = rand_tensors(&mut rng, &specs, 1.0);
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&params).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let clip = Arc::new(
            GradClipper::new(&ctx, &arena, max_norm, norm_type)
                .unwrap()
                .with_error_if_nonfinite(true),
        );
        opt.set_grad_clip(Some(clip.clone())).unwrap();
        let cpu_step = |cpu: &mut CpuOptimizer, params: &mut Vec<Vec<f32>>, g: &[Vec<f32>]| {
            let mut clipped = g.to_vec();
            cpu_clip_grad_norm(&mut clipped, max_norm, norm_type).unwrap();
            cpu.step(params, &clipped).unwrap();
        };

        // A good first step, so that the state is not all zero.
        let grads = rand_tensors(&mut rng, &specs, 1.0);
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu_step(&mut cpu, &mut params, &grads);

        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut g = rand_tensors(&mut rng, &specs, 1.0);
            g[1][3] = bad;
            arena.write_all_grads(&g).unwrap();
            let before = snapshot(&arena, &opt);
            match opt.step(&arena).unwrap_err() {
                Error::NonFiniteNorm { norm, norm_type: n } => {
                    assert_eq!(n, type_name);
                    if bad.is_nan() {
                        assert!(norm.is_nan(), "{type_name} norm of a NaN: {norm}");
                    } else {
                        assert_eq!(norm, f32::INFINITY, "{type_name} norm of {bad}");
                    }
                }
                other => panic!("{type_name} {bad}: expected NonFiniteNorm, got {other:?}"),
            }
            assert_eq!(snapshot(&arena, &opt), before, "{type_name} {bad}: step");
            let mut enc = encoder(&ctx);
            assert!(matches!(
                opt.encode_step(&mut enc, &arena),
                Err(Error::Unsupported(_))
            ));
            ctx.queue().submit([enc.finish()]);
            assert_eq!(
                snapshot(&arena, &opt),
                before,
                "{type_name} {bad}: encode_step"
            );
            assert!(Arc::ptr_eq(opt.grad_clip().unwrap(), &clip));
        }
        for t in ["w", "b", "z"] {
            assert_eq!(opt.step_count(t).unwrap(), 1, "{t}");
        }

        // Fixed gradients: the next step works and matches clip-then-step on the CPU.
        let grads = rand_tensors(&mut rng, &specs, 1.0);
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu_step(&mut cpu, &mut params, &grads);
        assert!(clip.read_coefficient().unwrap() < 1.0, "clipping is active");
        let got = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            assert_close(
                &format!("{type_name} params {}", s.name),
                &got[i],
                &params[i],
                ATOL,
                RTOL,
            );
            for name in opt.state_names() {
                assert_close(
                    &format!("{type_name} {name} {}", s.name),
                    &opt.read_state(name, &s.name).unwrap(),
                    &cpu.read_state(name, &s.name).unwrap(),
                    ATOL,
                    RTOL,
                );
            }
            assert_eq!(opt.step_count(&s.name).unwrap(), 2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Found while writing the cases above (library bugs, now fixed).

/// `Device::destroy` only marks the device invalid; wgpu runs the lost callback (which sets the
/// context's flag) from the next `poll`. Until then `check_alive` passes, `step` returns `Ok`
/// and advances the step counts without running anything, and the first readback panics in
/// wgpu's default uncaptured-error handler (`Buffer::map_async`: "Buffer with 'readback
/// staging' label is invalid").
#[test]
fn calls_right_after_destroy_without_a_poll_are_device_lost() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &[TensorSpec::new("w", 4)]).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    ctx.wait().unwrap();
    ctx.device().destroy();
    assert_lost("check_alive", ctx.check_alive());
    assert_lost("write_params", arena.write_params("w", &[1.0; 4]));
    assert_lost("step", opt.step(&arena));
    assert_eq!(
        opt.step_count("w").unwrap(),
        0,
        "a refused step must not count"
    );
    assert_lost("read_params", arena.read_params("w"));
}

/// `read_f32` takes any buffer, but copies from it without checking `COPY_SRC`: wgpu's
/// validation error goes to the default uncaptured-error handler, which panics
/// (`CommandEncoder::finish`: "Usage flags BufferUsages(STORAGE) ... do not contain required
/// usage flags BufferUsages(COPY_SRC)").
#[test]
fn reading_a_buffer_without_copy_src_is_an_error() {
    let Some(ctx) = gpu() else { return };
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("storage only"),
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = read_f32(&ctx, &buf, 0, 4).unwrap_err();
    assert!(
        matches!(e, Error::Validation(_) | Error::Unsupported(_)),
        "{e:?}"
    );
}

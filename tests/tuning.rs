//! Per-adapter kernel shapes (src/tune.rs, src/optim/tuner.rs): every candidate work split
//! gives bit-identical params and state, and matches the CPU reference, on the awkward sizes,
//! on 1,000 packed small tensors and on 10,000 tensors of 0-300 elements with frozen tensors
//! among them (padding zero); the on-disk cache is written, reused, and ignored when stale or
//! unreadable; a cache that cannot be written is no error; a bad pinned shape is a typed error.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use wgpu_optim::tune::{KernelShape, ShapeSource, Tuning, CACHE_FILE};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    ContextOptions, CpuOptimizer, Error, GpuContext, Optimizer, OptimizerConfig, ParamArena,
    TensorSpec,
};

const STEPS: usize = 4;

/// A context with its own cache directory (the tests must not share the user's cache).
fn ctx_with(tuning: Tuning, cache: Option<&Path>) -> Option<GpuContext> {
    let ctx = gpu_with(ContextOptions {
        tuning: Some(tuning),
        tune_cache_dir: cache.map(Path::to_path_buf),
        ..Default::default()
    })?;
    if cache.is_none() {
        ctx.set_tune_cache_dir(None);
    }
    Some(ctx)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-optim-tune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything a run leaves: the params image and every state image, as bits.
type Outcome = (Vec<u32>, Vec<(String, Vec<u32>)>);

/// `STEPS` steps of `cfg` with the context's current shape on a fresh optimizer over `arena`
/// (params reset to `init`), the same gradients and frozen pattern every time; the CPU
/// reference is compared after the last step when `cpu` is given.
fn run(
    ctx: &GpuContext,
    arena: &ParamArena,
    cfg: &OptimizerConfig,
    init: &[Vec<f32>],
    grads: &[Vec<Vec<f32>>],
    cpu: Option<&[TensorSpec]>,
    what: &str,
) -> Outcome {
    arena.write_all_params(init).unwrap();
    let mut gpu = Optimizer::new(ctx, arena, cfg.clone()).unwrap();
    let mut reference = cpu.map(|specs| {
        (
            CpuOptimizer::new(cfg.clone(), specs).unwrap(),
            init.to_vec(),
        )
    });
    let names: Vec<String> = arena
        .layout()
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    for (k, g) in grads.iter().enumerate() {
        arena.write_all_grads(g).unwrap();
        for (i, n) in names.iter().enumerate() {
            gpu.set_frozen(n, frozen(k, i)).unwrap();
            if let Some((c, _)) = &mut reference {
                c.set_frozen(n, frozen(k, i)).unwrap();
            }
        }
        gpu.step(arena).unwrap();
        if let Some((c, p)) = &mut reference {
            c.step(p, g).unwrap();
        }
    }
    let image = arena.read_params_image().unwrap();
    // Padding between tensors stays zero.
    let mut inside = vec![false; image.len()];
    for t in arena.layout().tensors() {
        inside[t.offset..t.offset + t.len].fill(true);
    }
    for (j, (&v, &ins)) in image.iter().zip(&inside).enumerate() {
        assert!(ins || v == 0.0, "{what}: padding element {j} is {v}");
    }
    let states: Vec<(String, Vec<u32>)> = gpu
        .state_names()
        .into_iter()
        .map(|s| {
            let img = gpu.read_state_image(s).unwrap();
            (s.to_string(), bits(&img))
        })
        .collect();
    if let Some((c, p)) = &reference {
        let got = arena.read_all_params().unwrap();
        for (i, n) in names.iter().enumerate() {
            assert_close(
                &format!("{what} tensor {i} param"),
                &got[i],
                &p[i],
                ATOL,
                RTOL,
            );
            for s in c.tensor_state_names(n).unwrap() {
                let want = c.read_state(s, n).unwrap();
                let have = gpu.read_state(s, n).unwrap();
                assert_close(&format!("{what} tensor {i} {s}"), &have, &want, ATOL, RTOL);
            }
        }
    }
    (bits(&image), states)
}

/// Every elementwise variant of the table, every candidate shape, on `lens`: bit-identical to
/// the default shape's run, which matches the CPU reference.
fn every_shape_on(lens: &[usize], seed: u64, configs: &[OptimizerConfig], shapes: &[KernelShape]) {
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let init: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..STEPS)
        .map(|_| lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect())
        .collect();
    for cfg in configs {
        let what = format!("{} over {} tensors", cfg.name(), lens.len());
        ctx.set_tuning(Tuning::Defaults);
        let want = run(&ctx, &arena, cfg, &init, &grads, Some(&specs), &what);
        for &shape in shapes {
            ctx.set_tuning(Tuning::Pinned(shape));
            let got = run(
                &ctx,
                &arena,
                cfg,
                &init,
                &grads,
                None,
                &format!("{what} {shape}"),
            );
            assert!(got.0 == want.0, "{what}: params differ at shape {shape}");
            for ((name, a), (_, b)) in got.1.iter().zip(&want.1) {
                assert!(a == b, "{what}: state {name} differs at shape {shape}");
            }
            let shapes_used: Vec<KernelShape> =
                ctx.tune_report().choices.iter().map(|c| c.shape).collect();
            assert!(
                shapes_used.iter().all(|&s| s == shape),
                "{what}: {shapes_used:?}"
            );
        }
    }
}

fn tuned_variants() -> Vec<OptimizerConfig> {
    let v: Vec<OptimizerConfig> = OptimizerConfig::variants()
        .into_iter()
        .filter(|c| c.is_tuned())
        .collect();
    // Every family but Muon and Adafactor: the elementwise ones, and the update passes of
    // LARS, LAMB, Lion, ADOPT and the hypergradient rules.
    assert!(v.len() >= 18, "{}", v.len());
    assert!(v.iter().any(|c| c.family() == "lamb") && v.iter().any(|c| c.is_elementwise()));
    v
}

fn all_shapes() -> Vec<KernelShape> {
    let lim = wgpu::Limits {
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..Default::default()
    };
    KernelShape::candidates(&lim)
}

fn device_shapes(ctx: &GpuContext) -> Vec<KernelShape> {
    KernelShape::candidates(ctx.limits())
}

#[test]
fn every_shape_is_bit_identical_on_the_awkward_sizes() {
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let shapes = device_shapes(&ctx);
    assert!(shapes.len() >= 3, "{shapes:?}");
    drop(ctx);
    every_shape_on(
        &[1, 255, 257, 278_011, 0, 3],
        11,
        &tuned_variants(),
        &shapes,
    );
}

#[test]
fn every_shape_is_bit_identical_on_a_thousand_packed_tensors() {
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let shapes = device_shapes(&ctx);
    drop(ctx);
    let mut rng = fastrand::Rng::with_seed(5);
    let lens: Vec<usize> = (0..1000)
        .map(|_| {
            if rng.u8(..) < 20 {
                0
            } else {
                rng.usize(1..600)
            }
        })
        .collect();
    every_shape_on(&lens, 12, &tuned_variants(), &shapes);
}

#[test]
fn ten_thousand_small_tensors_match_cpu_at_the_extreme_shapes() {
    // One variant per family (the flag combinations ran above), on 10,000 tensors of 0-300
    // elements: nearly every chunk is packed, frozen tensors sit among live ones.
    let mut rng = fastrand::Rng::with_seed(6);
    let lens: Vec<usize> = (0..10_000).map(|_| rng.usize(0..=300)).collect();
    let mut families: Vec<&str> = Vec::new();
    let configs: Vec<OptimizerConfig> = tuned_variants()
        .into_iter()
        .filter(|c| {
            let new = !families.contains(&c.family());
            families.push(c.family());
            new
        })
        .collect();
    let shapes = all_shapes();
    let (first, last) = (shapes[0], shapes[shapes.len() - 1]);
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let extremes: Vec<KernelShape> = [first, last]
        .into_iter()
        .filter(|s| s.fits(ctx.limits()))
        .collect();
    drop(ctx);
    every_shape_on(&lens, 13, &configs, &extremes);
}

fn adam() -> OptimizerConfig {
    OptimizerConfig::preset("adam").unwrap()
}

/// Builds an Adam optimizer (which resolves adam_step's shape) and returns that choice.
fn adam_choice(ctx: &GpuContext) -> wgpu_optim::tune::ShapeChoice {
    let arena = ParamArena::new(ctx, &[TensorSpec::new("w", 1000)]).unwrap();
    Optimizer::new(ctx, &arena, adam()).unwrap();
    ctx.tune_report()
        .choices
        .into_iter()
        .find(|c| c.kernel == "adam_step")
        .unwrap()
}

fn edit_cache(dir: &Path, f: impl Fn(&mut serde_json::Value)) {
    let path = dir.join(CACHE_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn the_cache_is_written_reused_and_ignored_when_stale() {
    let dir = temp_dir("cache");
    let Some(ctx) = ctx_with(Tuning::Auto, Some(&dir)) else {
        return;
    };
    // First use on this adapter: timed, and written.
    let first = adam_choice(&ctx);
    assert_eq!(first.source, ShapeSource::Tuned);
    assert_eq!(first.timings.len(), device_shapes(&ctx).len());
    let fastest = first
        .timings
        .iter()
        .min_by(|a, b| a.seconds_per_step.total_cmp(&b.seconds_per_step))
        .unwrap();
    assert_eq!(first.shape, fastest.shape);
    assert!(dir.join(CACHE_FILE).is_file());
    // The same context reuses its choice without timing again.
    let again = adam_choice(&ctx);
    assert_eq!(again, first);
    drop(ctx);

    // A new context (a new process would be the same) reads it instead of timing.
    let ctx = ctx_with(Tuning::Auto, Some(&dir)).unwrap();
    let cached = adam_choice(&ctx);
    assert_eq!(cached.source, ShapeSource::Cached);
    assert_eq!(cached.shape, first.shape);
    assert_eq!(cached.tuned_at_unix, first.tuned_at_unix);
    // The timings survive the JSON round trip (to the last few ulps).
    for (a, b) in cached.timings.iter().zip(&first.timings) {
        assert_eq!(a.shape, b.shape);
        assert!((a.seconds_per_step - b.seconds_per_step).abs() <= 1e-12 * b.seconds_per_step);
    }
    assert_eq!(ctx.tune_report().cached.len(), 1);
    drop(ctx);

    // Stale: another adapter, another driver version, another library version, or an edited
    // kernel.
    for (field, value) in [
        ("name", "Some Other GPU"),
        ("driver_info", "some other driver 1.0"),
        ("library", "0.0.0-other"),
        ("source_hash", "0000000000000000"),
    ] {
        edit_cache(&dir, |v| {
            for e in v["entries"].as_array_mut().unwrap() {
                if field == "source_hash" {
                    e["source_hash"] = value.into();
                } else {
                    e["adapter"][field] = value.into();
                }
            }
        });
        let ctx = ctx_with(Tuning::Auto, Some(&dir)).unwrap();
        let c = adam_choice(&ctx);
        assert_eq!(c.source, ShapeSource::Tuned, "stale {field} was used");
        drop(ctx);
        // The new entry was added for this adapter; the stale one is kept only when it
        // belongs to another adapter key.
        let text = std::fs::read_to_string(dir.join(CACHE_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let n = v["entries"].as_array().unwrap().len();
        if field == "source_hash" {
            assert_eq!(n, 1, "{text}");
        } else {
            assert_eq!(n, 2, "{text}");
        }
        // Start the next case from a single valid entry.
        edit_cache(&dir, |v| {
            let keep: Vec<serde_json::Value> = v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["adapter"][field] != value && e["source_hash"] != value)
                .cloned()
                .collect();
            v["entries"] = keep.into();
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreadable_or_unwritable_cache_is_no_error() {
    let dir = temp_dir("corrupt");
    let Some(_) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    for garbage in [
        "{ not json",
        "{\"format\": \"something-else/9\", \"entries\": []}",
        "",
    ] {
        std::fs::write(dir.join(CACHE_FILE), garbage).unwrap();
        let ctx = ctx_with(Tuning::Auto, Some(&dir)).unwrap();
        let c = adam_choice(&ctx);
        assert_eq!(c.source, ShapeSource::Tuned);
        let notes = ctx.tune_report().cache_notes.join("\n");
        assert!(notes.contains("ignored"), "{notes}");
        drop(ctx);
        // Replaced by a valid file.
        let ctx = ctx_with(Tuning::Auto, Some(&dir)).unwrap();
        assert_eq!(adam_choice(&ctx).source, ShapeSource::Cached);
    }
    // A directory that cannot be created (its parent is a file): timed, used, not written.
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let ctx = ctx_with(Tuning::Auto, Some(&blocker.join("cache"))).unwrap();
    let c = adam_choice(&ctx);
    assert_eq!(c.source, ShapeSource::Tuned);
    let notes = ctx.tune_report().cache_notes.join("\n");
    assert!(notes.contains("not written"), "{notes}");
    // No cache at all: timed in every context.
    let ctx = ctx_with(Tuning::Auto, None).unwrap();
    assert_eq!(adam_choice(&ctx).source, ShapeSource::Tuned);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policies_without_timing_never_write() {
    let dir = temp_dir("policies");
    let Some(ctx) = ctx_with(Tuning::CachedOnly, Some(&dir)) else {
        return;
    };
    let c = adam_choice(&ctx);
    assert_eq!(
        (c.source, c.shape),
        (ShapeSource::Default, KernelShape::default())
    );
    assert!(c.timings.is_empty());
    let pinned = KernelShape::new(64).unwrap();
    ctx.set_tuning(Tuning::Pinned(pinned));
    let c = adam_choice(&ctx);
    assert_eq!((c.source, c.shape), (ShapeSource::Pinned, pinned));
    ctx.set_tuning(Tuning::Defaults);
    assert_eq!(adam_choice(&ctx).source, ShapeSource::Default);
    assert!(!dir.join(CACHE_FILE).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_pinned_shapes_are_typed_errors() {
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let arena = ParamArena::new(&ctx, &[TensorSpec::new("w", 10)]).unwrap();
    arena.write_all_params(&[vec![1.0; 10]]).unwrap();
    let uneven = KernelShape {
        workgroup_size: 256,
        vec4_per_invocation: 3,
    };
    ctx.set_tuning(Tuning::Pinned(uneven));
    let e = Optimizer::new(&ctx, &arena, adam()).unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    let too_wide = KernelShape::new(1024).unwrap();
    if !too_wide.fits(ctx.limits()) {
        ctx.set_tuning(Tuning::Pinned(too_wide));
        let e = Optimizer::new(&ctx, &arena, adam()).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    }
    // Nothing was lost: the params are as they were.
    assert_eq!(arena.read_all_params().unwrap(), vec![vec![1.0; 10]]);
    assert!(matches!(KernelShape::new(48), Err(Error::InvalidConfig(_))));
    assert!(matches!(
        "128x4".parse::<Tuning>(),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn on_demand_tuning_times_every_candidate() {
    let dir = temp_dir("ondemand");
    let Some(ctx) = ctx_with(Tuning::Defaults, Some(&dir)) else {
        return;
    };
    // Even under Defaults, an explicit call times and records (for `optbench tune`).
    let c = wgpu_optim::optim::tune_kernel(&ctx, adam(), Some(1 << 16))
        .unwrap()
        .unwrap();
    assert_eq!(c.source, ShapeSource::Tuned);
    assert_eq!(c.elements, 1 << 16);
    assert_eq!(c.timings.len(), device_shapes(&ctx).len());
    assert!(c.timings.iter().all(|t| t.seconds_per_step > 0.0));
    // Rules with their own segments have their own shapes; LAMB's update pass is tuned.
    let muon: OptimizerConfig = wgpu_optim::optim::muon::MuonConfig::default().into();
    assert!(!muon.is_tuned() && !muon.is_elementwise());
    assert!(wgpu_optim::optim::tune_kernel(&ctx, muon, None)
        .unwrap()
        .is_none());
    let lamb = OptimizerConfig::preset("lamb").unwrap();
    assert!(lamb.is_tuned() && !lamb.is_elementwise());
    let c = wgpu_optim::optim::tune_kernel(&ctx, lamb, Some(1 << 16))
        .unwrap()
        .unwrap();
    assert_eq!(c.kernel, "lamb_apply");
    assert!(matches!(
        wgpu_optim::optim::tune_kernel(&ctx, adam(), Some(0)),
        Err(Error::InvalidConfig(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn norms_are_bit_identical_at_every_shape() {
    // The partials pass of NormReducer / GradClipper / the AMP guard takes the tuned split too;
    // its 256 virtual lanes keep the sums in one order.
    use wgpu_optim::{GradClipper, NormReducer, NormSource, NormType};
    let Some(ctx) = ctx_with(Tuning::Defaults, None) else {
        return;
    };
    let lens = [1usize, 255, 257, 278_011, 0, 3];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(21);
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 2.0)).collect();
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let run = |ctx: &GpuContext| {
        let mut out = Vec::new();
        for (source, ty) in [
            (NormSource::Grads, NormType::L2),
            (NormSource::Params, NormType::L2),
            (NormSource::Grads, NormType::Inf),
        ] {
            let r = NormReducer::new(ctx, &arena, source, ty).unwrap();
            let (per, total) = r.compute().unwrap();
            out.push((bits(&per), total.to_bits()));
        }
        arena.write_all_grads(&grads).unwrap();
        let clip = GradClipper::new(ctx, &arena, 1.0, NormType::L2).unwrap();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        clip.encode(&mut enc);
        ctx.queue().submit([enc.finish()]);
        let coef = clip.read_coefficient().unwrap();
        (out, coef.to_bits())
    };
    arena.write_all_params(&params).unwrap();
    arena.write_all_grads(&grads).unwrap();
    let want = run(&ctx);
    // A reducer against the f64 norm, so the default is right before the others match it.
    let l2: f64 = grads
        .iter()
        .flatten()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let got = f32::from_bits(want.0[0].1) as f64;
    assert!((got - l2).abs() <= 1e-5 * l2, "{got} vs {l2}");
    for shape in device_shapes(&ctx) {
        ctx.set_tuning(Tuning::Pinned(shape));
        let got = run(&ctx);
        assert!(got == want, "norms differ at shape {shape}");
        let used = ctx.tune_report().choices;
        assert!(
            used.iter()
                .any(|c| c.kernel == "norm_partials" && c.shape == shape),
            "{used:?}"
        );
    }
}

#[test]
fn a_bad_tuning_environment_variable_is_a_typed_error() {
    // Every other test of this file passes its policy explicitly, so none reads the variable
    // while this one has it set.
    if ctx_with(Tuning::Defaults, None).is_none() {
        return;
    }
    std::env::set_var(wgpu_optim::tune::TUNE_ENV, "fastest-please");
    let e = wgpu_optim::GpuContext::with_options(ContextOptions {
        tune_cache_dir: Some(temp_dir("env")),
        ..Default::default()
    });
    std::env::set_var(wgpu_optim::tune::TUNE_ENV, "64x16");
    let pinned = wgpu_optim::GpuContext::with_options(ContextOptions::default());
    std::env::remove_var(wgpu_optim::tune::TUNE_ENV);
    assert!(matches!(e, Err(Error::InvalidConfig(_))), "{e:?}");
    assert_eq!(
        pinned.unwrap().tuning(),
        Tuning::Pinned(KernelShape::new(64).unwrap())
    );
}

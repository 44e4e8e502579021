//! Muon (torch.optim.Muon, SPEC-2 §2.8): the fixture's cases through the CPU reference and the
//! GPU against torch's f32-Newton–Schulz run (`expected_ns_f32`) at PyTorch's fp32 tolerance,
//! and against torch's own bf16 run at the loose tolerance of SPEC-2 §2.8 (the measured
//! distance is printed); GPU against the CPU twin (bit for bit on lavapipe) over steps with
//! frozen tensors at awkward shapes, also split into several binding batches; bitwise reruns;
//! Muon + AdamW in one optimizer against the two run separately; every bad input's typed error.

use crate::common::more_cases::{run_cpu, run_gpu, three_cases, MoreCase, Probe};
use crate::common::{assert_close, assert_twin, bits_eq, f32s, gpu, gpu_with, randn, ATOL, RTOL};
use serde_json::Value;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, ContextOptions, CpuOptimizer, Error, GpuContext, MuonAdjustLr, MuonConfig,
    Optimizer, OptimizerConfig, ParamArena, ParamGroups, Select, TensorSpec,
};

fn config(case: &MoreCase) -> MuonConfig {
    case.check_keys(&[
        "lr",
        "weight_decay",
        "momentum",
        "nesterov",
        "ns_coefficients",
        "eps",
        "ns_steps",
        "adjust_lr_fn",
    ]);
    let d = MuonConfig::default();
    let coef = case.hyper["ns_coefficients"]
        .as_array()
        .expect("coefficients");
    MuonConfig {
        lr: case.f("lr"),
        weight_decay: case.f_or("weight_decay", d.weight_decay),
        momentum: case.f_or("momentum", d.momentum),
        nesterov: case
            .hyper
            .get("nesterov")
            .map_or(d.nesterov, |v| v.as_bool().unwrap()),
        ns_coefficients: [0, 1, 2].map(|i| coef[i].as_f64().unwrap()),
        eps: case.f_or("eps", d.eps),
        ns_steps: case.f_or("ns_steps", d.ns_steps as f64) as u32,
        adjust_lr: match case.hyper.get("adjust_lr_fn") {
            None | Some(Value::Null) => MuonAdjustLr::Original,
            Some(Value::String(s)) if s == "original" => MuonAdjustLr::Original,
            Some(Value::String(s)) if s == "match_rms_adamw" => MuonAdjustLr::MatchRmsAdamW,
            Some(Value::String(s)) if s == "spectral_unclamped" => MuonAdjustLr::SpectralUnclamped,
            Some(v) => panic!("adjust_lr_fn {v}"),
        },
    }
}

/// The `expected_ns_f32` blocks of the Muon cases, in file order: (params, state).
/// One `expected_ns_f32` block: params, and state by key.
type NsExpected = (Vec<Vec<f64>>, serde_json::Map<String, Value>);

fn expected_ns_f32() -> Vec<NsExpected> {
    let text = include_str!("../fixtures/torch_optim_more_cases.json");
    let all: Value = serde_json::from_str(text).unwrap();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["optimizer"] == "muon")
        .map(|c| {
            let e = &c["expected_ns_f32"];
            let params = e["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect();
            (params, e["state"].as_object().unwrap().clone())
        })
        .collect()
}

fn nums(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Params and momentum against `expected_ns_f32` at the fp32 tolerance; params against torch's
/// bf16 `expected` within 5% of the largest movement. Returns the worst bf16 distance as a
/// fraction of that movement, and in absolute terms.
fn check_against_fixture(
    what: &str,
    case: &MoreCase,
    ns: &NsExpected,
    params: &[Vec<f32>],
    opt: &dyn Probe,
) -> (f64, f64) {
    let mut worst = 0f64;
    let mut worst_abs = 0f64;
    for (i, p) in params.iter().enumerate() {
        assert_close(
            &format!("{what} t{i} params (f32 NS)"),
            p,
            &f32s(&ns.0[i]),
            ATOL,
            RTOL,
        );
        let key = format!("{i}.momentum_buffer");
        if let Some(want) = ns.1.get(&key) {
            let got = opt.state("momentum_buffer", &format!("t{i}")).unwrap();
            assert_close(&format!("{what} {key}"), &got, &nums(want), ATOL, RTOL);
            // The momentum does not depend on the Newton–Schulz dtype.
            assert_close(
                &format!("{what} {key} (bf16 run)"),
                &got,
                &f32s(&case.expected.state[&key]),
                ATOL,
                RTOL,
            );
        }
        let moved = case.init[i]
            .iter()
            .zip(&case.expected.params[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        let dist = p
            .iter()
            .zip(&case.expected.params[i])
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0f64, f64::max);
        if moved > 0.0 {
            assert!(
                dist <= 0.05 * moved,
                "{what} t{i}: {dist:e} from torch's bf16 result, over 5% of the movement {moved:e}"
            );
            worst = worst.max(dist / moved);
            worst_abs = worst_abs.max(dist);
        }
    }
    (worst, worst_abs)
}

#[test]
fn fixture_cases_through_the_cpu_reference() {
    let ns = expected_ns_f32();
    for (k, case) in three_cases("muon").iter().enumerate() {
        let (params, cpu) = run_cpu(case, config(case).into());
        let (worst, abs) =
            check_against_fixture(&format!("case {k} cpu"), case, &ns[k], &params, &cpu);
        eprintln!(
            "muon case {k}: CPU (f32 NS) vs torch bf16: worst {worst:.4} of the movement ({abs:.2e})"
        );
        assert_eq!(
            cpu.tensor_state_names("t0").unwrap(),
            vec!["momentum_buffer"]
        );
    }
}

#[test]
fn fixture_cases_through_the_gpu_and_its_cpu_twin() {
    let Some(ctx) = gpu() else { return };
    let ns = expected_ns_f32();
    for (k, case) in three_cases("muon").iter().enumerate() {
        let cfg: OptimizerConfig = config(case).into();
        let (params, opt) = run_gpu(&ctx, case, cfg.clone());
        let (worst, abs) =
            check_against_fixture(&format!("case {k} gpu"), case, &ns[k], &params, &opt);
        eprintln!(
            "muon case {k}: GPU (f32 NS) vs torch bf16: worst {worst:.4} of the movement ({abs:.2e})"
        );
        let (cpu_params, cpu) = run_cpu(case, cfg);
        for i in 0..params.len() {
            let t = format!("t{i}");
            assert_twin(&ctx, &format!("case {k} {t}"), &params[i], &cpu_params[i]);
            assert_twin(
                &ctx,
                &format!("case {k} {t} momentum"),
                &opt.state("momentum_buffer", &t).unwrap(),
                &cpu.state("momentum_buffer", &t).unwrap(),
            );
        }
    }
}

/// Matrices of every kind: 1×1, one row, one column, wide, tall, square, a [0, k] matrix, and
/// sizes past a 32-tile.
fn matrix_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::shaped("m1x1", &[1, 1]),
        TensorSpec::shaped("row", &[1, 40]),
        TensorSpec::shaped("col", &[40, 1]),
        TensorSpec::shaped("wide", &[17, 33]),
        TensorSpec::shaped("tall", &[70, 9]),
        TensorSpec::shaped("square", &[64, 64]),
        TensorSpec::shaped("empty", &[0, 5]),
        TensorSpec::shaped("big", &[33, 129]),
        TensorSpec::shaped("tall_big", &[257, 129]),
    ]
}

/// Runs `steps` steps of `groups` over `specs` on the GPU and the CPU with the same data, each
/// tensor frozen on a seeded-random step; returns (GPU params, CPU params, GPU opt, CPU opt).
fn run_both(
    ctx: &GpuContext,
    specs: &[TensorSpec],
    groups: ParamGroups,
    steps: usize,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, Optimizer, CpuOptimizer) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let arena = ParamArena::new(ctx, specs).unwrap();
    let mut opt = Optimizer::with_groups(ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(specs, groups).unwrap();
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    for k in 0..steps {
        let grads: Vec<Vec<f32>> = specs
            .iter()
            .map(|s| randn(&mut rng, s.len, 0.1 + k as f32))
            .collect();
        for s in specs {
            let frozen = k > 0 && rng.usize(..5) == 0;
            opt.set_frozen(&s.name, frozen).unwrap();
            cpu.set_frozen(&s.name, frozen).unwrap();
        }
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
    }
    (arena.read_all_params().unwrap(), params, opt, cpu)
}

fn assert_states_twin(
    ctx: &GpuContext,
    what: &str,
    specs: &[TensorSpec],
    gpu: &Optimizer,
    cpu: &CpuOptimizer,
) {
    for s in specs {
        for name in cpu.tensor_state_names(&s.name).unwrap() {
            assert_twin(
                ctx,
                &format!("{what} {} {name}", s.name),
                &gpu.read_state(name, &s.name).unwrap(),
                &cpu.read_state(name, &s.name).unwrap(),
            );
        }
    }
}

#[test]
fn every_variant_gpu_matches_the_cpu_twin_with_frozen_steps() {
    let Some(ctx) = gpu() else { return };
    let specs = matrix_specs();
    for (v, cfg) in MuonConfig::test_variants().into_iter().enumerate() {
        let ns = cfg.ns_steps as usize;
        let groups = ParamGroups::new().group(Select::All, cfg);
        let (g, c, opt, cpu) = run_both(&ctx, &specs, groups, 7, 10 + v as u64);
        for (i, s) in specs.iter().enumerate() {
            assert_twin(&ctx, &format!("variant {v} {}", s.name), &g[i], &c[i]);
        }
        assert_states_twin(&ctx, &format!("variant {v}"), &specs, &opt, &cpu);
        // One batch: momentum, 3 matmul stages per iteration (every matrix in each), apply.
        assert_eq!(opt.dispatches_per_step(), 2 + 3 * ns, "variant {v}");
        assert_eq!(opt.name(), "muon");
    }
}

#[test]
fn matrices_split_into_binding_batches_match_the_cpu_twin() {
    // 32 KiB per binding: each batch holds a few small matrices.
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(32 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let specs: Vec<TensorSpec> = (0..12)
        .map(|i| {
            TensorSpec::shaped(
                format!("w{i}"),
                &[[5, 17, 30, 1][i % 4], [31, 9, 40, 7][i % 4]],
            )
        })
        .collect();
    let cfg = MuonConfig::test_variants()[0].clone();
    let ns = cfg.ns_steps as usize;
    let (g, c, opt, cpu) = run_both(
        &ctx,
        &specs,
        ParamGroups::new().group(Select::All, cfg),
        5,
        3,
    );
    for (i, s) in specs.iter().enumerate() {
        assert_twin(&ctx, &format!("batched {}", s.name), &g[i], &c[i]);
    }
    assert_states_twin(&ctx, "batched", &specs, &opt, &cpu);
    let per_batch = 2 + 3 * ns;
    let d = opt.dispatches_per_step();
    assert!(
        d > per_batch && d % per_batch == 0,
        "{d} dispatches: not several batches"
    );
    // A matrix whose scratch alone exceeds a binding is refused before anything is built.
    let arena = ParamArena::new(&ctx, &[TensorSpec::shaped("huge", &[64, 64])]).unwrap();
    assert!(matches!(
        Optimizer::new(&ctx, &arena, MuonConfig::default()),
        Err(Error::BufferTooLarge { .. })
    ));
}

#[test]
fn reruns_are_bitwise_identical() {
    let Some(ctx) = gpu() else { return };
    let specs = matrix_specs();
    let groups = || ParamGroups::new().group(Select::All, MuonConfig::test_variants()[1].clone());
    let (a, _, _, _) = run_both(&ctx, &specs, groups(), 4, 77);
    let (b, _, _, _) = run_both(&ctx, &specs, groups(), 4, 77);
    for (x, y) in a.iter().zip(&b) {
        assert!(bits_eq(x, y), "a rerun changed bits");
    }
}

#[test]
fn muon_with_adamw_in_one_optimizer_equals_the_two_run_separately() {
    let Some(ctx) = gpu() else { return };
    let mut specs = matrix_specs();
    specs.extend([
        TensorSpec::new("bias", 257),
        TensorSpec::shaped("gain", &[40]),
        TensorSpec::shaped("conv", &[3, 4, 5]),
        TensorSpec::new("one", 1),
    ]);
    let muon = MuonConfig {
        lr: 0.03,
        ..Default::default()
    };
    let adamw = AdamConfig {
        lr: 0.004,
        ..AdamConfig::adamw()
    };
    let steps = 7;
    let (g, c, opt, cpu) = run_both(
        &ctx,
        &specs,
        muon.clone().with_adamw(adamw.clone()),
        steps,
        5,
    );
    assert_eq!(opt.segments(), 2);
    assert_eq!(opt.name(), "muon+adamw");
    assert_eq!(opt.group_of("conv").unwrap(), Some(1));
    assert_eq!(opt.group_of("wide").unwrap(), Some(0));
    for (i, s) in specs.iter().enumerate() {
        assert_twin(&ctx, &format!("combined {}", s.name), &g[i], &c[i]);
    }
    assert_states_twin(&ctx, "combined", &specs, &opt, &cpu);
    // Separately: Muon alone on the matrices, AdamW alone on the rest (same seed: same data
    // and the same frozen steps).
    let is_matrix = |s: &TensorSpec| s.shape.as_ref().is_some_and(|d| d.len() == 2);
    let only_muon = ParamGroups::new().group(Select::matrices(), muon);
    let only_adamw = ParamGroups::new().group(
        Select::matching(|t| t.shape.as_ref().is_none_or(|d| d.len() != 2)),
        adamw,
    );
    let (gm, cm, om, _) = run_both(&ctx, &specs, only_muon, steps, 5);
    let (ga, ca, oa, _) = run_both(&ctx, &specs, only_adamw, steps, 5);
    for (i, s) in specs.iter().enumerate() {
        let (want_g, want_c, sep) = if is_matrix(s) {
            (&gm[i], &cm[i], &om)
        } else {
            (&ga[i], &ca[i], &oa)
        };
        assert!(
            bits_eq(&g[i], want_g),
            "{}: combined GPU != separate GPU",
            s.name
        );
        assert!(
            bits_eq(&c[i], want_c),
            "{}: combined CPU != separate CPU",
            s.name
        );
        for name in opt.tensor_state_names(&s.name).unwrap() {
            assert!(
                bits_eq(
                    &opt.read_state(name, &s.name).unwrap(),
                    &sep.read_state(name, &s.name).unwrap()
                ),
                "{} {name}: combined != separate",
                s.name
            );
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let matrix = TensorSpec::shaped("w", &[4, 6]);
    let not =
        |specs: &[TensorSpec], tensor: &str, shape: Option<Vec<usize>>| match CpuOptimizer::new(
            MuonConfig::default(),
            specs,
        ) {
            Err(Error::NotAMatrix {
                tensor: t,
                shape: s,
                optimizer: "Muon",
            }) => assert_eq!((t.as_str(), s), (tensor, shape)),
            other => panic!("{other:?}"),
        };
    not(&[matrix.clone(), TensorSpec::new("b", 6)], "b", None);
    not(&[TensorSpec::shaped("v", &[6])], "v", Some(vec![6]));
    not(
        &[TensorSpec::shaped("k", &[2, 3, 4])],
        "k",
        Some(vec![2, 3, 4]),
    );
    not(&[TensorSpec::shaped("s", &[])], "s", Some(vec![]));
    assert!(matches!(
        CpuOptimizer::new(MuonConfig::default(), &[TensorSpec::shaped("z", &[5, 0])]),
        Err(Error::InvalidConfig(_))
    ));
    // Too large to index: refused before anything is allocated.
    assert!(matches!(
        CpuOptimizer::new(
            MuonConfig::default(),
            &[TensorSpec::shaped("h", &[40_000, 40_000])]
        ),
        Err(Error::LimitExceeded { .. })
    ));
    // [0, k] is fine (an empty update), as in torch.
    CpuOptimizer::new(MuonConfig::default(), &[TensorSpec::shaped("e", &[0, 5])]).unwrap();
    let hyper = |cfg: MuonConfig, field: &str| match CpuOptimizer::new(
        cfg,
        std::slice::from_ref(&matrix),
    ) {
        Err(Error::InvalidHyperparameter { name, .. }) => assert_eq!(name, field),
        other => panic!("{field}: {other:?}"),
    };
    let d = MuonConfig::default;
    hyper(MuonConfig { lr: -1.0, ..d() }, "lr");
    hyper(
        MuonConfig {
            momentum: -0.1,
            ..d()
        },
        "momentum",
    );
    hyper(
        MuonConfig {
            weight_decay: -1.0,
            ..d()
        },
        "weight_decay",
    );
    hyper(
        MuonConfig {
            eps: f64::NAN,
            ..d()
        },
        "eps",
    );
    hyper(
        MuonConfig {
            ns_steps: 100,
            ..d()
        },
        "ns_steps",
    );
    hyper(
        MuonConfig {
            ns_coefficients: [1.0, f64::INFINITY, 0.0],
            ..d()
        },
        "ns_coefficients[1]",
    );
    // torch checks no upper bound on momentum, nor does this.
    CpuOptimizer::new(
        MuonConfig {
            momentum: 1.5,
            ..d()
        },
        std::slice::from_ref(&matrix),
    )
    .unwrap();
    // Groups of one Muon segment share the NS settings, fixed in its tables.
    let specs = [matrix.clone(), TensorSpec::shaped("w2", &[3, 3])];
    let two = ParamGroups::new()
        .group(Select::names(["w"]), d())
        .group(Select::names(["w2"]), MuonConfig { ns_steps: 3, ..d() });
    assert!(matches!(
        CpuOptimizer::with_groups(&specs, two),
        Err(Error::InvalidConfig(_))
    ));
    let mut cpu = CpuOptimizer::new(d(), &specs).unwrap();
    let other = MuonConfig {
        ns_coefficients: [1.5, -0.5, 0.0],
        ..d()
    };
    assert!(matches!(
        cpu.set_group_config(0, other),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(cpu.group_config(0).unwrap(), &OptimizerConfig::from(d()));
    cpu.set_group_config(
        0,
        MuonConfig {
            lr: 0.5,
            nesterov: false,
            ..d()
        },
    )
    .unwrap();
    assert_eq!(cpu.group_lr(0).unwrap(), 0.5);

    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &[matrix, TensorSpec::new("b", 6)]).unwrap();
    assert!(matches!(
        Optimizer::new(&ctx, &arena, d()),
        Err(Error::NotAMatrix { .. })
    ));
    // With the bias under AdamW it builds.
    Optimizer::with_groups(&ctx, &arena, d().with_adamw(AdamConfig::adamw())).unwrap();
    // A Muon group that selects nothing is an empty segment that steps fine.
    let flat = ParamArena::new(&ctx, &[TensorSpec::new("b", 6)]).unwrap();
    let mut o = Optimizer::with_groups(&ctx, &flat, d().with_adamw(AdamConfig::adamw())).unwrap();
    flat.write_all_grads(&[vec![0.1; 6]]).unwrap();
    o.step(&flat).unwrap();
    let mut c = CpuOptimizer::with_groups(
        &[TensorSpec::new("b", 6)],
        d().with_adamw(AdamConfig::adamw()),
    )
    .unwrap();
    let mut p = vec![vec![0.0f32; 6]];
    c.step(&mut p, &[vec![0.1; 6]]).unwrap();
    assert_eq!(flat.read_all_params().unwrap(), p);
}

#[test]
fn clipped_gradients_reach_the_momentum() {
    use std::sync::Arc;
    use wgpu_optim::norm::cpu_clip_grad_norm;
    use wgpu_optim::{GradClipper, NormType};
    let Some(ctx) = gpu() else { return };
    let specs = matrix_specs();
    let mut rng = fastrand::Rng::with_seed(9);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let groups = MuonConfig::test_variants()[0]
        .clone()
        .with_adamw(AdamConfig::adamw());
    let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    let clipper = Arc::new(GradClipper::new(&ctx, &arena, 0.5, NormType::L2).unwrap());
    opt.set_grad_clip(Some(clipper)).unwrap();
    let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    for _ in 0..3 {
        let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 2.0)).collect();
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        let mut clipped = grads.clone();
        let total = cpu_clip_grad_norm(&mut clipped, 0.5, NormType::L2).unwrap();
        assert!(total > 0.5, "the clip must bite");
        cpu.step(&mut params, &clipped).unwrap();
    }
    // The GPU's coefficient is an f32 reduction, the CPU's an f64 one: compare at a tolerance.
    let got = arena.read_all_params().unwrap();
    for (i, s) in specs.iter().enumerate() {
        assert_close(
            &format!("clipped {}", s.name),
            &got[i],
            &params[i],
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("clipped {} momentum", s.name),
            &opt.read_state("momentum_buffer", &s.name).unwrap(),
            &cpu.read_state("momentum_buffer", &s.name).unwrap(),
            1e-7,
            1e-4,
        );
    }
}

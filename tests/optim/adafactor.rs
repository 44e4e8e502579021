//! Adafactor (torch.optim.Adafactor, SPEC-2 §2.7): the fixture's three cases through the CPU
//! reference and the GPU at PyTorch's fp32 tolerance (params, row_var / col_var / variance with
//! their torch shapes, step counts); the GPU against the CPU twin (bit for bit on an exact
//! adapter such as lavapipe, else the fp32 tolerance) over 7 steps with frozen tensors on
//! vectors, 0-D scalars, matrices, degenerate matrices and a batch of matrices; state sizes
//! from the shapes; checkpoint round trips with exact resume; Adafactor next to AdamW in one
//! optimizer; every bad hyperparameter's typed error.

use crate::common::more_cases::{run_cpu, run_gpu, three_cases, MoreCase, Probe};
use crate::common::{assert_close, assert_twin, bits_eq, gpu, randn, ATOL, RTOL};
use serde_json::Value;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdafactorConfig, AdamConfig, CpuOptimizer, Error, Optimizer, OptimizerConfig, ParamArena,
    ParamGroups, Select, TensorSpec,
};

fn config(case: &MoreCase) -> AdafactorConfig {
    case.check_keys(&["lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"]);
    let eps = case.hyper["eps"].as_array().expect("eps is a pair");
    assert_eq!(eps.len(), 2);
    AdafactorConfig {
        lr: case.f("lr"),
        beta2_decay: case.f("beta2_decay"),
        eps: (
            match &eps[0] {
                Value::Null => None,
                v => Some(v.as_f64().unwrap()),
            },
            eps[1].as_f64().unwrap(),
        ),
        d: case.f("d"),
        weight_decay: case.f("weight_decay"),
        maximize: case.b("maximize"),
    }
}

/// torch's state shapes: row_var = shape with the last dim 1, col_var = the second-to-last.
fn torch_state_len(shape: &[usize], key: &str) -> usize {
    let k = shape.len();
    let mut s = shape.to_vec();
    match key {
        "row_var" => s[k - 1] = 1,
        "col_var" => s[k - 2] = 1,
        _ => {}
    }
    s.iter().product()
}

fn check_case(what: &str, case: &MoreCase, params: &[Vec<f32>], opt: &dyn Probe) {
    for (i, p) in params.iter().enumerate() {
        let name = format!("t{i}");
        assert_close(
            &format!("{what} {name} params"),
            p,
            &crate::common::f32s(&case.expected.params[i]),
            ATOL,
            RTOL,
        );
        let want_keys: Vec<&str> = if case.shapes[i].len() >= 2 {
            vec!["row_var", "col_var"]
        } else {
            vec!["variance"]
        };
        assert_eq!(opt.names(&name), want_keys, "{what} {name} state names");
        for key in ["row_var", "col_var", "variance"] {
            let fk = format!("{i}.{key}");
            match case.expected.state.get(&fk) {
                Some(want) => {
                    let got = opt.state(key, &name).unwrap();
                    assert_eq!(
                        got.len(),
                        torch_state_len(&case.shapes[i], key),
                        "{what} {fk}"
                    );
                    assert_close(
                        &format!("{what} {fk}"),
                        &got,
                        &crate::common::f32s(want),
                        ATOL,
                        RTOL,
                    );
                }
                None => assert!(
                    matches!(opt.state(key, &name), Err(Error::UnknownState { .. })),
                    "{what} {name} keeps no {key}"
                ),
            }
        }
        assert_eq!(
            opt.steps(&name),
            case.expected.step[&i.to_string()] as u64,
            "{what} {name} steps"
        );
        assert_eq!(opt.steps(&name), case.steps_of(i), "{what} {name} steps");
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (c, case) in three_cases("adafactor").iter().enumerate() {
        let cfg = config(case);
        let (params, cpu) = run_cpu(case, cfg.into());
        check_case(&format!("cpu case {c}"), case, &params, &cpu);
    }
}

#[test]
fn gpu_matches_pytorch_fixtures() {
    let Some(ctx) = gpu() else { return };
    for (c, case) in three_cases("adafactor").iter().enumerate() {
        let cfg = config(case);
        let (params, opt) = run_gpu(&ctx, case, cfg.into());
        check_case(&format!("gpu case {c}"), case, &params, &opt);
    }
}

/// The twin's shapes: a vector of 1, matrices [1,1], [1,300], [300,1], [17,33], [257,129], a
/// batch of matrices [4,17,33], a 0-D scalar, a vector of 255, a declared-shapeless tensor of
/// 257, a [3,1,5,2] batch and an empty [0, 4] matrix.
fn twin_specs() -> Vec<TensorSpec> {
    let shapes: Vec<Vec<usize>> = vec![
        vec![1],
        vec![1, 1],
        vec![1, 300],
        vec![300, 1],
        vec![17, 33],
        vec![4, 17, 33],
        vec![257, 129],
        vec![],
        vec![255],
        vec![3, 1, 5, 2],
        vec![0, 4],
    ];
    let mut specs: Vec<TensorSpec> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| TensorSpec::shaped(format!("t{i}"), s))
        .collect();
    specs.push(TensorSpec::new("flat", 257));
    specs
}

fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0 && step > 0
}

const STATES: [&str; 3] = ["row_var", "col_var", "variance"];

/// `state_bytes` and every tensor's state lengths follow the shapes: R + C per matrix of the
/// batch, n per vector, each region padded to 4 elements.
fn expected_state_elements(specs: &[TensorSpec]) -> (u64, Vec<[usize; 3]>) {
    let mut total = 0u64;
    let mut lens = Vec::new();
    for s in specs {
        let shape = s.shape.clone().unwrap_or_else(|| vec![s.len]);
        let l = if shape.len() >= 2 {
            let k = shape.len();
            let b: usize = shape[..k - 2].iter().product();
            [b * shape[k - 2], b * shape[k - 1], 0]
        } else {
            [0, 0, s.len]
        };
        total += l.iter().map(|&x| x.next_multiple_of(4) as u64).sum::<u64>();
        lens.push(l);
    }
    (total, lens)
}

#[test]
fn gpu_matches_cpu_twin_with_frozen_tensors() {
    let Some(ctx) = gpu() else { return };
    let specs = twin_specs();
    let (elements, lens) = expected_state_elements(&specs);
    let mut rng = fastrand::Rng::with_seed(7);
    for (v, cfg) in AdafactorConfig::test_variants().into_iter().enumerate() {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut gpu_opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        assert_eq!(gpu_opt.state_bytes(), (elements * 4).max(16), "variant {v}");
        assert_eq!(
            gpu_opt.dispatches_per_step(),
            1,
            "one dispatch for every tensor"
        );
        let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        for k in 0..7 {
            for (i, s) in specs.iter().enumerate() {
                gpu_opt.set_frozen(&s.name, frozen(k, i)).unwrap();
                cpu.set_frozen(&s.name, frozen(k, i)).unwrap();
            }
            // Exact zeros in some gradients (a zero row gives a zero row statistic).
            let grads: Vec<Vec<f32>> = specs
                .iter()
                .map(|s| {
                    let mut g = randn(&mut rng, s.len, 0.5);
                    for x in g.iter_mut().step_by(11) {
                        *x = 0.0;
                    }
                    g
                })
                .collect();
            arena.write_all_grads(&grads).unwrap();
            gpu_opt.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            for (i, s) in specs.iter().enumerate() {
                let what = format!("variant {v} step {k} {}", s.name);
                assert_twin(&ctx, &format!("{what} params"), &got[i], &params[i]);
                for (j, st) in STATES.iter().enumerate() {
                    let g = gpu_opt.read_state(st, &s.name);
                    let c = cpu.read_state(st, &s.name);
                    let factored = s.shape.as_ref().is_some_and(|x| x.len() >= 2);
                    if factored == (j == 2) {
                        assert!(matches!(g, Err(Error::UnknownState { .. })), "{what} {st}");
                        assert!(matches!(c, Err(Error::UnknownState { .. })), "{what} {st}");
                        continue;
                    }
                    let (g, c) = (g.unwrap(), c.unwrap());
                    assert_eq!(g.len(), lens[i][j], "{what} {st} length");
                    assert_eq!(c.len(), lens[i][j], "{what} {st} length");
                    assert_twin(&ctx, &format!("{what} {st}"), &g, &c);
                }
                let steps = (0..=k).filter(|&q| !frozen(q, i)).count() as u64;
                assert_eq!(gpu_opt.step_count(&s.name).unwrap(), steps, "{what}");
                assert_eq!(cpu.step_count(&s.name).unwrap(), steps, "{what}");
            }
        }
        // Something moved: a non-empty tensor that stepped changed its params.
        let first = arena.read_all_params().unwrap();
        assert!(first[6].iter().any(|x| x.is_finite()));
    }
}

#[test]
fn frozen_tensor_is_untouched_and_reruns_are_bitwise() {
    let Some(ctx) = gpu() else { return };
    let specs = twin_specs();
    let cfg = AdafactorConfig::test_variants()[1].clone();
    let mut rng = fastrand::Rng::with_seed(11);
    let init: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    let run = || {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        arena.write_all_params(&init).unwrap();
        arena.write_all_grads(&grads).unwrap();
        opt.set_frozen("t6", true).unwrap();
        for _ in 0..3 {
            opt.step(&arena).unwrap();
        }
        (arena.read_all_params().unwrap(), opt)
    };
    let (a, oa) = run();
    let (b, _) = run();
    for i in 0..specs.len() {
        assert!(bits_eq(&a[i], &b[i]), "t{i}: rerun differs");
    }
    assert!(bits_eq(&a[6], &init[6]), "frozen t6 changed");
    assert_eq!(oa.step_count("t6").unwrap(), 0);
    assert!(oa
        .read_state("row_var", "t6")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(!bits_eq(&a[4], &init[4]), "t4 did not move");
}

#[test]
fn state_sizes_follow_the_shapes() {
    let specs = twin_specs();
    let (_, lens) = expected_state_elements(&specs);
    let cpu = CpuOptimizer::new(AdafactorConfig::default(), &specs).unwrap();
    for (i, s) in specs.iter().enumerate() {
        let names = cpu.tensor_state_names(&s.name).unwrap();
        let factored = s.shape.as_ref().is_some_and(|x| x.len() >= 2);
        if factored {
            assert_eq!(names, vec!["row_var", "col_var"], "{}", s.name);
            assert_eq!(
                cpu.read_state("row_var", &s.name).unwrap().len(),
                lens[i][0]
            );
            assert_eq!(
                cpu.read_state("col_var", &s.name).unwrap().len(),
                lens[i][1]
            );
        } else {
            assert_eq!(names, vec!["variance"], "{}", s.name);
            assert_eq!(cpu.read_state("variance", &s.name).unwrap().len(), s.len);
        }
    }
    // [257, 129]: 257 + 129 values, not 33153.
    assert_eq!(lens[6], [257, 129, 0]);
    let Some(ctx) = gpu() else { return };
    let big = [TensorSpec::shaped("w", &[1024, 768])];
    let arena = ParamArena::new(&ctx, &big).unwrap();
    let opt = Optimizer::new(&ctx, &arena, AdafactorConfig::default()).unwrap();
    assert_eq!(opt.state_bytes(), (1024 + 768) * 4);
    let adam = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    assert_eq!(adam.state_bytes(), 2 * 1024 * 768 * 4);
}

#[test]
fn bad_hyperparameters_are_typed_errors() {
    let specs = [TensorSpec::new("a", 4)];
    let d = AdafactorConfig::default();
    let bad: Vec<(&str, AdafactorConfig)> = vec![
        (
            "lr",
            AdafactorConfig {
                lr: -1e-3,
                ..d.clone()
            },
        ),
        (
            "lr",
            AdafactorConfig {
                lr: f64::NAN,
                ..d.clone()
            },
        ),
        (
            "beta2_decay",
            AdafactorConfig {
                beta2_decay: 0.1,
                ..d.clone()
            },
        ),
        (
            "beta2_decay",
            AdafactorConfig {
                beta2_decay: f64::NAN,
                ..d.clone()
            },
        ),
        (
            "eps[0]",
            AdafactorConfig {
                eps: (Some(-1e-8), 1e-3),
                ..d.clone()
            },
        ),
        (
            "eps[1]",
            AdafactorConfig {
                eps: (None, -1e-3),
                ..d.clone()
            },
        ),
        (
            "d",
            AdafactorConfig {
                d: 0.5,
                ..d.clone()
            },
        ),
        (
            "d",
            AdafactorConfig {
                d: f64::NAN,
                ..d.clone()
            },
        ),
        (
            "weight_decay",
            AdafactorConfig {
                weight_decay: -0.1,
                ..d.clone()
            },
        ),
    ];
    for (name, cfg) in bad {
        match CpuOptimizer::new(cfg.clone(), &specs) {
            Err(Error::InvalidHyperparameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
        assert!(matches!(
            OptimizerConfig::from(cfg).validate(),
            Err(Error::InvalidHyperparameter { .. })
        ));
    }
    // Edges torch accepts: lr 0, beta2_decay 0, eps1 0, eps2 0, d = 1 and d = inf.
    for cfg in [
        AdafactorConfig {
            lr: 0.0,
            beta2_decay: 0.0,
            eps: (Some(0.0), 0.0),
            ..d.clone()
        },
        AdafactorConfig {
            d: f64::INFINITY,
            ..d.clone()
        },
    ] {
        CpuOptimizer::new(cfg, &specs).unwrap();
    }
    // A bad replacement changes nothing.
    let mut cpu = CpuOptimizer::new(d.clone(), &specs).unwrap();
    assert!(cpu
        .set_group_config(
            0,
            AdafactorConfig {
                d: 0.0,
                ..d.clone()
            }
        )
        .is_err());
    assert_eq!(cpu.group_config(0).unwrap(), &OptimizerConfig::from(d));
    assert!(matches!(
        cpu.set_group_lr(0, f64::NAN),
        Err(Error::InvalidHyperparameter { .. })
    ));
}

/// N steps, save, M more steps; against N + M uninterrupted steps, bitwise, on both engines,
/// and the saved state has torch's shapes.
#[test]
fn checkpoint_round_trip_resumes_exactly() {
    let specs = twin_specs();
    let cfg = AdafactorConfig::test_variants()[1].clone();
    let mut rng = fastrand::Rng::with_seed(5);
    let init: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..6)
        .map(|_| specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect())
        .collect();
    // CPU: the uninterrupted run.
    let mut full = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p_full = init.clone();
    for g in &grads {
        full.step(&mut p_full, g).unwrap();
    }
    // CPU: 3 steps, save, a fresh optimizer loads, 3 more.
    let mut first = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p = init.clone();
    first.set_frozen("t4", true).unwrap();
    first.step(&mut p, &grads[0]).unwrap();
    first.set_frozen("t4", false).unwrap();
    let mut p_ref = init.clone();
    let mut reference = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    reference.set_frozen("t4", true).unwrap();
    reference.step(&mut p_ref, &grads[0]).unwrap();
    reference.set_frozen("t4", false).unwrap();
    for g in &grads[1..3] {
        first.step(&mut p, g).unwrap();
        reference.step(&mut p_ref, g).unwrap();
    }
    let ck = first.save_checkpoint(Some(&p)).unwrap();
    assert_eq!(ck.shape("t6.row_var"), Some(&[257usize, 1][..]));
    assert_eq!(ck.shape("t6.col_var"), Some(&[1usize, 129][..]));
    assert_eq!(ck.shape("t5.row_var"), Some(&[4usize, 17, 1][..]));
    assert_eq!(ck.shape("t5.col_var"), Some(&[4usize, 1, 33][..]));
    assert_eq!(ck.shape("t7.variance"), Some(&[][..]));
    assert_eq!(ck.shape("flat.variance"), Some(&[257usize][..]));
    assert!(!ck.contains("t6.variance") && !ck.contains("t7.row_var"));
    let bytes = ck.to_bytes().unwrap();
    let ck = wgpu_optim::Checkpoint::from_bytes(&bytes).unwrap();
    let mut resumed = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p2 = vec![Vec::new(); specs.len()];
    resumed.load_checkpoint(&ck, Some(&mut p2)).unwrap();
    for g in &grads[3..] {
        resumed.step(&mut p2, g).unwrap();
        reference.step(&mut p_ref, g).unwrap();
    }
    for i in 0..specs.len() {
        assert!(bits_eq(&p2[i], &p_ref[i]), "cpu resume t{i}");
        for st in resumed.tensor_state_names(&specs[i].name).unwrap() {
            let a = resumed.read_state(st, &specs[i].name).unwrap();
            let b = reference.read_state(st, &specs[i].name).unwrap();
            assert!(bits_eq(&a, &b), "cpu resume t{i} {st}");
        }
    }
    drop(full);
    // A state of the wrong shape is refused and changes nothing.
    let mut bad = wgpu_optim::Checkpoint::from_bytes(&bytes).unwrap();
    bad.insert_f32("t6.row_var", &[1, 257], &vec![0.0; 257])
        .unwrap();
    let mut fresh = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    assert!(matches!(
        fresh.load_checkpoint(&bad, None),
        Err(Error::CheckpointMismatch(_))
    ));
    assert_eq!(fresh.step_count("t6").unwrap(), 0);

    // GPU: save after 3 steps, load into a fresh optimizer, 3 more; against the CPU reference.
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut g1 = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    arena.write_all_params(&init).unwrap();
    g1.set_frozen("t4", true).unwrap();
    arena.write_all_grads(&grads[0]).unwrap();
    g1.step(&arena).unwrap();
    g1.set_frozen("t4", false).unwrap();
    for g in &grads[1..3] {
        arena.write_all_grads(g).unwrap();
        g1.step(&arena).unwrap();
    }
    let ckg = g1.save_checkpoint(Some(&arena)).unwrap();
    // The GPU's checkpoint loads into the CPU engine and vice versa.
    let mut cross = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut pc = vec![Vec::new(); specs.len()];
    cross.load_checkpoint(&ckg, Some(&mut pc)).unwrap();
    let arena2 = ParamArena::new(&ctx, &specs).unwrap();
    let mut g2 = Optimizer::new(&ctx, &arena2, cfg.clone()).unwrap();
    g2.load_checkpoint(&ck, Some(&arena2)).unwrap();
    for g in &grads[3..] {
        arena2.write_all_grads(g).unwrap();
        g2.step(&arena2).unwrap();
        cross.step(&mut pc, g).unwrap();
    }
    let got = arena2.read_all_params().unwrap();
    for (i, s) in specs.iter().enumerate() {
        assert_twin(&ctx, &format!("gpu resume {}", s.name), &got[i], &p_ref[i]);
        assert_twin(&ctx, &format!("cross resume {}", s.name), &pc[i], &p_ref[i]);
        for st in g2.tensor_state_names(&s.name).unwrap() {
            let a = g2.read_state(st, &s.name).unwrap();
            let b = reference.read_state(st, &s.name).unwrap();
            assert_twin(&ctx, &format!("gpu resume {} {st}", s.name), &a, &b);
        }
    }
}

/// Adafactor on the matrices and AdamW on the rest: two segments of one step, against each
/// rule run alone on its tensors, on both engines; a reset clears Adafactor's state.
#[test]
fn adafactor_next_to_adamw() {
    let specs = vec![
        TensorSpec::shaped("w1", &[17, 33]),
        TensorSpec::shaped("b1", &[33]),
        TensorSpec::shaped("w2", &[4, 9, 5]),
        TensorSpec::shaped("b2", &[257]),
    ];
    let ada = AdafactorConfig::test_variants()[1].clone();
    let adamw = AdamConfig {
        lr: 1e-3,
        ..AdamConfig::adamw()
    };
    let groups = || {
        ParamGroups::new()
            .group(Select::matrices(), ada.clone())
            .group(Select::Rest, adamw.clone())
    };
    let mut rng = fastrand::Rng::with_seed(3);
    let init: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|_| specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect())
        .collect();
    let mut both = CpuOptimizer::with_groups(&specs, groups()).unwrap();
    let mut p = init.clone();
    let (mats, rest): (Vec<usize>, Vec<usize>) =
        (0..specs.len()).partition(|&i| specs[i].shape.as_ref().is_some_and(|s| s.len() == 2));
    let sub =
        |idx: &[usize]| -> Vec<TensorSpec> { idx.iter().map(|&i| specs[i].clone()).collect() };
    let mut a_alone = CpuOptimizer::new(ada.clone(), &sub(&mats)).unwrap();
    let mut w_alone = CpuOptimizer::new(adamw.clone(), &sub(&rest)).unwrap();
    let mut pa: Vec<Vec<f32>> = mats.iter().map(|&i| init[i].clone()).collect();
    let mut pw: Vec<Vec<f32>> = rest.iter().map(|&i| init[i].clone()).collect();
    for g in &grads {
        both.step(&mut p, g).unwrap();
        let ga: Vec<Vec<f32>> = mats.iter().map(|&i| g[i].clone()).collect();
        let gw: Vec<Vec<f32>> = rest.iter().map(|&i| g[i].clone()).collect();
        a_alone.step(&mut pa, &ga).unwrap();
        w_alone.step(&mut pw, &gw).unwrap();
    }
    for (k, &i) in mats.iter().enumerate() {
        assert!(bits_eq(&p[i], &pa[k]), "{}", specs[i].name);
    }
    for (k, &i) in rest.iter().enumerate() {
        assert!(bits_eq(&p[i], &pw[k]), "{}", specs[i].name);
    }
    // w2 is 3-D: not a matrix, so it is AdamW's.
    assert_eq!(
        both.tensor_state_names("w2").unwrap(),
        vec!["exp_avg", "exp_avg_sq"]
    );
    assert_eq!(
        both.tensor_state_names("w1").unwrap(),
        vec!["row_var", "col_var"]
    );

    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut g = Optimizer::with_groups(&ctx, &arena, groups()).unwrap();
    assert_eq!(g.segments(), 2);
    arena.write_all_params(&init).unwrap();
    for gr in &grads {
        arena.write_all_grads(gr).unwrap();
        g.step(&arena).unwrap();
    }
    let got = arena.read_all_params().unwrap();
    for (i, s) in specs.iter().enumerate() {
        assert_twin(&ctx, &s.name, &got[i], &p[i]);
        for st in g.tensor_state_names(&s.name).unwrap() {
            let a = g.read_state(st, &s.name).unwrap();
            let b = both.read_state(st, &s.name).unwrap();
            assert_twin(&ctx, &format!("{} {st}", s.name), &a, &b);
        }
    }
    g.reset_state().unwrap();
    assert_eq!(g.step_count("w1").unwrap(), 0);
    assert!(g
        .read_state("row_var", "w1")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(g
        .read_state("col_var", "w1")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    assert!(g
        .read_state("exp_avg", "b1")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    // Arena-shaped state images cannot hold factored state: a typed error.
    assert!(matches!(
        g.read_state_image("row_var"),
        Err(Error::Unsupported(_))
    ));
}

/// 32 KiB bindings: the tensors split into several batches (one dispatch each), still the
/// CPU twin's results; a tensor whose params alone exceed a binding is a typed error.
#[test]
fn tensors_split_into_binding_batches_match_the_cpu_twin() {
    use crate::common::gpu_with;
    use wgpu_optim::ContextOptions;
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(32 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let specs: Vec<TensorSpec> = (0..14)
        .map(|i| match i % 4 {
            0 => TensorSpec::shaped(format!("t{i}"), &[31, 117]),
            1 => TensorSpec::shaped(format!("t{i}"), &[1700]),
            2 => TensorSpec::shaped(format!("t{i}"), &[2, 9, 140]),
            _ => TensorSpec::shaped(format!("t{i}"), &[1, 300]),
        })
        .collect();
    let cfg = AdafactorConfig::test_variants()[2].clone();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    assert!(opt.dispatches_per_step() > 1, "not several batches");
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(21);
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    for k in 0..4 {
        opt.set_frozen("t5", k == 1).unwrap();
        cpu.set_frozen("t5", k == 1).unwrap();
        let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
    }
    let got = arena.read_all_params().unwrap();
    for (i, s) in specs.iter().enumerate() {
        assert_twin(&ctx, &format!("batched {}", s.name), &got[i], &params[i]);
        for st in cpu.tensor_state_names(&s.name).unwrap() {
            let a = opt.read_state(st, &s.name).unwrap();
            let b = cpu.read_state(st, &s.name).unwrap();
            assert_twin(&ctx, &format!("batched {} {st}", s.name), &a, &b);
        }
    }
    let arena = ParamArena::new(&ctx, &[TensorSpec::shaped("huge", &[100, 100])]).unwrap();
    assert!(matches!(
        Optimizer::new(&ctx, &arena, AdafactorConfig::default()),
        Err(Error::BufferTooLarge { .. })
    ));
}

/// Loss scaling (the kernel multiplies by the unscale coefficient) and the non-finite skip
/// (the AMP guard gates Adafactor's dispatch): the GPU against the CPU twin through two
/// overflowing steps, and a skipped step changes nothing.
#[test]
fn loss_scaling_and_the_non_finite_skip_match_the_cpu_twin() {
    use wgpu_optim::{AmpConfig, GradScalerConfig, LossScale};
    let Some(ctx) = gpu() else { return };
    let specs = twin_specs();
    let amp = AmpConfig {
        loss_scale: LossScale::Dynamic(GradScalerConfig {
            init_scale: 1024.0,
            growth_interval: 3,
            ..GradScalerConfig::default()
        }),
        skip_non_finite: true,
    };
    let cfg = AdafactorConfig::test_variants()[1].clone();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    opt.set_amp(&arena, Some(amp)).unwrap();
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    cpu.set_amp(Some(amp)).unwrap();
    let mut rng = fastrand::Rng::with_seed(13);
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    for k in 0..8 {
        let scale = cpu.amp_state().unwrap().scale;
        let mut grads: Vec<Vec<f32>> = specs
            .iter()
            .map(|s| {
                randn(&mut rng, s.len, 1.0)
                    .iter()
                    .map(|x| x * scale)
                    .collect()
            })
            .collect();
        if k == 3 || k == 4 {
            grads[6][100] = f32::INFINITY;
        }
        let before = arena.read_all_params().unwrap();
        let rv_before = opt.read_state("row_var", "t6").unwrap();
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        let skipped = k == 3 || k == 4;
        assert_eq!(opt.found_inf().unwrap(), Some(skipped), "step {k}");
        assert_eq!(cpu.found_inf(), Some(skipped), "step {k}");
        let got = arena.read_all_params().unwrap();
        if skipped {
            assert_eq!(got, before, "step {k}: a skipped step changed params");
            assert_eq!(opt.read_state("row_var", "t6").unwrap(), rv_before);
        }
        for (i, s) in specs.iter().enumerate() {
            assert_twin(
                &ctx,
                &format!("amp step {k} {}", s.name),
                &got[i],
                &params[i],
            );
        }
    }
    assert_eq!(opt.step_count("t6").unwrap(), 6);
    for s in &specs {
        for st in cpu.tensor_state_names(&s.name).unwrap() {
            let a = opt.read_state(st, &s.name).unwrap();
            let b = cpu.read_state(st, &s.name).unwrap();
            assert_twin(&ctx, &format!("amp {} {st}", s.name), &a, &b);
        }
    }
}

/// Global-norm clipping reaches the statistics and the update (the GPU's coefficient is an
/// f32 reduction, the CPU's f64: compared at a tolerance).
#[test]
fn clipped_gradients_reach_the_statistics() {
    use std::sync::Arc;
    use wgpu_optim::norm::cpu_clip_grad_norm;
    use wgpu_optim::{GradClipper, NormType};
    let Some(ctx) = gpu() else { return };
    let specs = twin_specs();
    let cfg = AdafactorConfig::test_variants()[0].clone();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let clipper = Arc::new(GradClipper::new(&ctx, &arena, 0.5, NormType::L2).unwrap());
    opt.set_grad_clip(Some(clipper)).unwrap();
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(17);
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
    let got = arena.read_all_params().unwrap();
    // rtol 1e-4, not the fp32 1.3e-6: the GPU's clip coefficient comes from an f32 tree sum of
    // the squared gradients, the host's (`cpu_clip_grad_norm`) from an f64 sum, and Adafactor
    // divides by RMS(u), which carries that relative difference into every element.
    for (i, s) in specs.iter().enumerate() {
        assert_close(
            &format!("clipped {}", s.name),
            &got[i],
            &params[i],
            1e-5,
            1e-4,
        );
        for st in cpu.tensor_state_names(&s.name).unwrap() {
            assert_close(
                &format!("clipped {} {st}", s.name),
                &opt.read_state(st, &s.name).unwrap(),
                &cpu.read_state(st, &s.name).unwrap(),
                1e-9,
                1e-4,
            );
        }
    }
}

/// Lookahead over Adafactor with `reset_state` (the reset clears the factored state through
/// its own places): the GPU against the CPU twin over two syncs.
#[test]
fn lookahead_with_state_reset_over_adafactor_matches_the_cpu_twin() {
    use wgpu_optim::{CpuLookahead, Lookahead, LookaheadConfig};
    let Some(ctx) = gpu() else { return };
    let specs = twin_specs();
    let cfg = AdafactorConfig::test_variants()[0].clone();
    let la = LookaheadConfig {
        k: 3,
        reset_state: true,
        ..LookaheadConfig::paper()
    };
    let mut rng = fastrand::Rng::with_seed(23);
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_all_params(&params).unwrap();
    let inner = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let mut g = Lookahead::new(&ctx, &arena, inner, la).unwrap();
    let mut c = CpuLookahead::new(CpuOptimizer::new(cfg, &specs).unwrap(), la, &params).unwrap();
    for k in 0..7 {
        let grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
        arena.write_all_grads(&grads).unwrap();
        g.step(&arena).unwrap();
        c.step(&mut params, &grads).unwrap();
        let got = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            assert_twin(
                &ctx,
                &format!("lookahead step {k} {}", s.name),
                &got[i],
                &params[i],
            );
            for st in c.inner().tensor_state_names(&s.name).unwrap() {
                let a = g.inner().read_state(st, &s.name).unwrap();
                let b = c.inner().read_state(st, &s.name).unwrap();
                assert_twin(&ctx, &format!("lookahead step {k} {} {st}", s.name), &a, &b);
                if k == 5 {
                    // Right after the second sync: reset.
                    assert!(a.iter().all(|&x| x == 0.0), "{} {st} not reset", s.name);
                }
            }
        }
    }
}

//! Checkpoints: PyTorch's checkpoints loaded and continued (CPU and GPU), exact resume for
//! every optimizer of the table and for a two-segment optimizer, the corrupt-file table (each
//! file, its error, and nothing changed), and an interrupted write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::common::{assert_close, bits_eq, gpu, randn, ATOL, RTOL};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, Checkpoint, CpuOptimizer, Error, LarsConfig, Optimizer, OptimizerConfig,
    ParamArena, ParamGroups, Select, SgdConfig, TensorSpec,
};

// ---------------------------------------------------------------------------------------------
// PyTorch's checkpoints (tests/fixtures/torch_checkpoints, schema in the fixtures README).

#[derive(Debug, serde::Deserialize)]
struct TorchCheckpoint {
    names: Vec<String>,
    shapes: BTreeMap<String, Vec<usize>>,
    steps: usize,
    grads: Vec<BTreeMap<String, Option<Vec<f64>>>>,
    expected: Block,
    checkpoint: Block,
}

#[derive(Debug, serde::Deserialize)]
struct Block {
    params: BTreeMap<String, Vec<f64>>,
    state: BTreeMap<String, Vec<f64>>,
}

const TORCH_CASES: &[&str] = &[
    "sgd_momentum",
    "sgd_nesterov",
    "adam",
    "adamw_amsgrad",
    "rmsprop_centered_momentum",
    "adagrad",
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_checkpoints")
}

fn torch_case(name: &str) -> (TorchCheckpoint, Checkpoint) {
    let dir = fixture_dir();
    let json = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let case: TorchCheckpoint = serde_json::from_str(&json).unwrap();
    let ck = Checkpoint::load(dir.join(format!("{name}.safetensors"))).unwrap();
    (case, ck)
}

/// The arena order the model declares its tensors in (not torch's id order), so that group
/// membership, not position, is what matches.
fn torch_specs(case: &TorchCheckpoint) -> Vec<TensorSpec> {
    [
        "fc1.weight",
        "fc1.bias",
        "norm.weight",
        "fc2.weight",
        "fc2.bias",
    ]
    .iter()
    .map(|n| TensorSpec::shaped(*n, &case.shapes[*n]))
    .collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn check_expected(
    what: &str,
    case: &TorchCheckpoint,
    specs: &[TensorSpec],
    params: &[Vec<f32>],
    state: impl Fn(&str, &str) -> Vec<f32>,
    steps: impl Fn(&str) -> u64,
) {
    for (spec, p) in specs.iter().zip(params) {
        let name = spec.name.as_str();
        assert_close(
            &format!("{what} {name} params"),
            p,
            &f32s(&case.expected.params[name]),
            ATOL,
            RTOL,
        );
    }
    for (key, want) in &case.expected.state {
        let (pname, skey) = case
            .names
            .iter()
            .find_map(|n| key.strip_prefix(&format!("{n}.")).map(|k| (n.as_str(), k)))
            .unwrap();
        if skey == "step" {
            assert_eq!(steps(pname), want[0] as u64, "{what} {key}");
        } else {
            assert_close(
                &format!("{what} {key}"),
                &state(skey, pname),
                &f32s(want),
                ATOL,
                RTOL,
            );
        }
    }
}

#[test]
fn torch_checkpoints_continue_on_the_cpu() {
    for name in TORCH_CASES {
        let (case, ck) = torch_case(name);
        let specs = torch_specs(&case);
        let mut opt =
            CpuOptimizer::with_groups(&specs, ParamGroups::from_checkpoint(&ck).unwrap()).unwrap();
        let mut params = Vec::new();
        opt.load_checkpoint(&ck, Some(&mut params)).unwrap();
        for (spec, p) in specs.iter().zip(&params) {
            assert!(bits_eq(
                p,
                &f32s(&case.checkpoint.params[spec.name.as_str()])
            ));
        }
        for k in 0..case.steps {
            let grads: Vec<Vec<f32>> = specs
                .iter()
                .map(|s| match &case.grads[k][s.name.as_str()] {
                    Some(g) => f32s(g),
                    None => vec![0.0; s.len],
                })
                .collect();
            for s in &specs {
                opt.set_frozen(s.name.as_str(), case.grads[k][s.name.as_str()].is_none())
                    .unwrap();
            }
            opt.step(&mut params, &grads).unwrap();
        }
        check_expected(
            &format!("cpu {name}"),
            &case,
            &specs,
            &params,
            |k, p| opt.read_state(k, p).unwrap(),
            |p| opt.step_count(p).unwrap(),
        );
    }
}

#[test]
fn torch_checkpoints_continue_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    for name in TORCH_CASES {
        let (case, ck) = torch_case(name);
        let specs = torch_specs(&case);
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut opt =
            Optimizer::with_groups(&ctx, &arena, ParamGroups::from_checkpoint(&ck).unwrap())
                .unwrap();
        opt.load_checkpoint(&ck, Some(&arena)).unwrap();
        // The params written into the arena are the checkpoint's.
        for s in &specs {
            let got = arena.read_params(s.name.as_str()).unwrap();
            assert!(bits_eq(
                &got,
                &f32s(&case.checkpoint.params[s.name.as_str()])
            ));
        }
        for k in 0..case.steps {
            for s in &specs {
                match &case.grads[k][s.name.as_str()] {
                    Some(g) => {
                        arena.write_grads(s.name.as_str(), &f32s(g)).unwrap();
                        opt.set_frozen(s.name.as_str(), false).unwrap();
                    }
                    None => opt.set_frozen(s.name.as_str(), true).unwrap(),
                }
            }
            opt.step(&arena).unwrap();
        }
        check_expected(
            &format!("gpu {name}"),
            &case,
            &specs,
            &arena.read_all_params().unwrap(),
            |k, p| opt.read_state(k, p).unwrap(),
            |p| opt.step_count(p).unwrap(),
        );
    }
}

#[test]
fn torch_checkpoint_round_trips_through_our_format() {
    // Loaded from PyTorch, saved by us, loaded again: the same state and the same hyper-
    // parameters; and our file keeps PyTorch's tensor names.
    let (case, ck) = torch_case("adamw_amsgrad");
    let specs = torch_specs(&case);
    let mut a =
        CpuOptimizer::with_groups(&specs, ParamGroups::from_checkpoint(&ck).unwrap()).unwrap();
    let mut params = Vec::new();
    a.load_checkpoint(&ck, Some(&mut params)).unwrap();
    let ours = a.save_checkpoint(Some(&params)).unwrap();
    for name in ck.names() {
        assert!(ours.contains(name), "{name} kept under PyTorch's name");
    }
    let bytes = ours.to_bytes().unwrap();
    let again = Checkpoint::from_bytes(&bytes).unwrap();
    let mut b =
        CpuOptimizer::with_groups(&specs, ParamGroups::from_checkpoint(&again).unwrap()).unwrap();
    let mut params_b = Vec::new();
    b.load_checkpoint(&again, Some(&mut params_b)).unwrap();
    assert_eq!(params, params_b);
    for g in 0..2 {
        assert_eq!(a.group_config(g).unwrap(), b.group_config(g).unwrap());
        assert_eq!(a.base_lr(g).unwrap(), b.base_lr(g).unwrap());
    }
    for s in &specs {
        for k in a.tensor_state_names(s.name.as_str()).unwrap() {
            assert_eq!(
                a.read_state(k, s.name.as_str()).unwrap(),
                b.read_state(k, s.name.as_str()).unwrap()
            );
        }
        assert_eq!(
            a.step_count(s.name.as_str()).unwrap(),
            b.step_count(s.name.as_str()).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Exact resume: N steps, save, load into fresh objects, M steps == N + M uninterrupted steps.

const LENS: &[usize] = &[1, 257, 4099, 33];

fn resume_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("a", LENS[0]),
        TensorSpec::new("b.weight", LENS[1]),
        TensorSpec::shaped("c.weight", &[17, 241]).in_group(0),
        TensorSpec::shaped("d", &[3, 11]),
    ]
}

/// Step `k`'s gradients (seeded by k) and which tensor is frozen on step k.
fn grads_at(k: usize, specs: &[TensorSpec]) -> Vec<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(1000 + k as u64);
    specs.iter().map(|s| randn(&mut rng, s.len, 0.5)).collect()
}

fn frozen_at(k: usize, tensor: usize) -> bool {
    (k + tensor) % 4 == 3
}

fn init_params(specs: &[TensorSpec]) -> Vec<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(7);
    specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect()
}

fn gpu_steps(
    opt: &mut Optimizer,
    arena: &ParamArena,
    specs: &[TensorSpec],
    ks: std::ops::Range<usize>,
) {
    for k in ks {
        arena.write_all_grads(&grads_at(k, specs)).unwrap();
        for (t, s) in specs.iter().enumerate() {
            opt.set_frozen(s.name.as_str(), frozen_at(k, t)).unwrap();
        }
        opt.step(arena).unwrap();
    }
}

fn cpu_steps(
    opt: &mut CpuOptimizer,
    params: &mut [Vec<f32>],
    specs: &[TensorSpec],
    ks: std::ops::Range<usize>,
) {
    for k in ks {
        for (t, s) in specs.iter().enumerate() {
            opt.set_frozen(s.name.as_str(), frozen_at(k, t)).unwrap();
        }
        opt.step(params, &grads_at(k, specs)).unwrap();
    }
}

/// A default Adam on `specs` from [`init_params`], after `steps` of [`cpu_steps`].
fn stepped_adam(specs: &[TensorSpec], steps: usize) -> (CpuOptimizer, Vec<Vec<f32>>) {
    let mut params = init_params(specs);
    let mut opt = CpuOptimizer::new(AdamConfig::default(), specs).unwrap();
    cpu_steps(&mut opt, &mut params, specs, 0..steps);
    (opt, params)
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Every param, step count and state of an optimizer, as bits: `params(i)` reads tensor `i`'s
/// params; the other three are the engine's `step_count`, `tensor_state_names`, `read_state`.
fn fingerprint(
    specs: &[TensorSpec],
    params: impl Fn(usize) -> Vec<f32>,
    step_count: impl Fn(&str) -> wgpu_optim::Result<u64>,
    state_names: impl Fn(&str) -> wgpu_optim::Result<Vec<&'static str>>,
    read_state: impl Fn(&str, &str) -> wgpu_optim::Result<Vec<f32>>,
) -> Vec<(String, Vec<u32>)> {
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect();
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let name = s.name.as_str();
        out.push((format!("{name} params"), bits(params(i))));
        out.push((
            format!("{name} step"),
            vec![step_count(name).unwrap() as u32],
        ));
        for k in state_names(name).unwrap() {
            out.push((format!("{name} {k}"), bits(read_state(k, name).unwrap())));
        }
    }
    out
}

/// [`fingerprint`] of a GPU optimizer.
fn gpu_fingerprint(
    opt: &Optimizer,
    arena: &ParamArena,
    specs: &[TensorSpec],
) -> Vec<(String, Vec<u32>)> {
    fingerprint(
        specs,
        |i| arena.read_params(specs[i].name.as_str()).unwrap(),
        |t| opt.step_count(t),
        |t| opt.tensor_state_names(t),
        |k, t| opt.read_state(k, t),
    )
}

/// [`fingerprint`] of a CPU optimizer over `params`.
fn cpu_fingerprint(
    opt: &CpuOptimizer,
    params: &[Vec<f32>],
    specs: &[TensorSpec],
) -> Vec<(String, Vec<u32>)> {
    fingerprint(
        specs,
        |i| params[i].clone(),
        |t| opt.step_count(t),
        |t| opt.tensor_state_names(t),
        |k, t| opt.read_state(k, t),
    )
}

fn two_segment_groups() -> ParamGroups {
    ParamGroups::new()
        .group(
            Select::names(["b.weight", "c.weight"]),
            LarsConfig {
                lr: 0.05,
                ..LarsConfig::default()
            },
        )
        .group(
            Select::Rest,
            AdamConfig {
                lr: 0.01,
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..AdamConfig::default()
            },
        )
}

/// The configurations the resume tests run: every variant of the table (each flag at least
/// once), one group per arena group, plus the two-segment optimizer.
fn resume_cases() -> Vec<(String, ParamGroups)> {
    let specs = resume_specs();
    let layout = wgpu_optim::ParamLayout::new(&specs, !15, 16).unwrap();
    let mut out: Vec<(String, ParamGroups)> = OptimizerConfig::variants()
        .into_iter()
        .map(|c| (c.describe(), ParamGroups::per_arena_group(&layout, c)))
        .collect();
    out.push(("lars+adamw".into(), two_segment_groups()));
    // Muon on the matrices (its own segment type, momentum and Newton–Schulz scratch) with
    // AdamW on the rest.
    out.push((
        "muon+adamw".into(),
        wgpu_optim::MuonConfig {
            lr: 0.02,
            ..Default::default()
        }
        .with_adamw(AdamConfig::adamw()),
    ));
    out
}

const N: usize = 3;
const M: usize = 3;

#[test]
fn gpu_resume_is_bitwise_exact_for_every_optimizer() {
    let Some(ctx) = gpu() else { return };
    let specs = resume_specs();
    for (what, groups) in resume_cases() {
        // Uninterrupted.
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init_params(&specs)).unwrap();
        let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
        gpu_steps(&mut opt, &arena, &specs, 0..N + M);
        let want = gpu_fingerprint(&opt, &arena, &specs);

        // N steps, saved to a file, dropped.
        let path = temp_path(&format!("gpu-{}.safetensors", what.replace(' ', "_")));
        {
            let arena = ParamArena::new(&ctx, &specs).unwrap();
            arena.write_all_params(&init_params(&specs)).unwrap();
            let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
            gpu_steps(&mut opt, &arena, &specs, 0..N);
            opt.save_checkpoint_file(&path, Some(&arena)).unwrap();
        }
        // A fresh context, arena and optimizer from the file alone (as a new process would).
        let ctx2 = gpu().unwrap();
        let arena = ParamArena::new(&ctx2, &specs).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        let mut opt =
            Optimizer::with_groups(&ctx2, &arena, ParamGroups::from_checkpoint(&ck).unwrap())
                .unwrap();
        opt.load_checkpoint_file(&path, Some(&arena)).unwrap();
        gpu_steps(&mut opt, &arena, &specs, N..N + M);
        let got = gpu_fingerprint(&opt, &arena, &specs);
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            assert_eq!(w, g, "{what}: {name} differs after resume");
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn cpu_resume_is_bitwise_exact_for_every_optimizer() {
    let specs = resume_specs();
    for (what, groups) in resume_cases() {
        let mut params = init_params(&specs);
        let mut opt = CpuOptimizer::with_groups(&specs, groups.clone()).unwrap();
        cpu_steps(&mut opt, &mut params, &specs, 0..N + M);
        let want = cpu_fingerprint(&opt, &params, &specs);

        let mut params = init_params(&specs);
        let mut opt = CpuOptimizer::with_groups(&specs, groups.clone()).unwrap();
        cpu_steps(&mut opt, &mut params, &specs, 0..N);
        let bytes = opt
            .save_checkpoint(Some(&params))
            .unwrap()
            .to_bytes()
            .unwrap();
        drop(opt);
        // `WGPU_OPTIM_FUZZ_SEEDS=dir` writes every one as a seed for fuzz/ (see its README).
        if let Some(dir) = std::env::var_os("WGPU_OPTIM_FUZZ_SEEDS") {
            let name = what.replace([' ', '='], "_");
            std::fs::write(
                PathBuf::from(dir).join(format!("{name}.safetensors")),
                &bytes,
            )
            .unwrap();
        }

        let ck = Checkpoint::from_bytes(&bytes).unwrap();
        let mut opt =
            CpuOptimizer::with_groups(&specs, ParamGroups::from_checkpoint(&ck).unwrap()).unwrap();
        let mut params = Vec::new();
        opt.load_checkpoint(&ck, Some(&mut params)).unwrap();
        cpu_steps(&mut opt, &mut params, &specs, N..N + M);
        assert_eq!(want, cpu_fingerprint(&opt, &params, &specs), "{what}");
    }
}

#[test]
fn gpu_checkpoints_load_on_the_cpu() {
    // One format for both engines: a GPU checkpoint continued on the CPU equals the GPU run
    // continued (bit for bit on lavapipe, at the fp32 tolerance elsewhere).
    let Some(ctx) = gpu() else { return };
    let specs = resume_specs();
    let groups = two_segment_groups();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_all_params(&init_params(&specs)).unwrap();
    let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    gpu_steps(&mut opt, &arena, &specs, 0..N);
    let ck = opt.save_checkpoint(Some(&arena)).unwrap();
    let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
    let mut params = Vec::new();
    cpu.load_checkpoint(&ck, Some(&mut params)).unwrap();
    gpu_steps(&mut opt, &arena, &specs, N..N + M);
    cpu_steps(&mut cpu, &mut params, &specs, N..N + M);
    let gp = arena.read_all_params().unwrap();
    for ((s, g), c) in specs.iter().zip(&gp).zip(&params) {
        crate::common::assert_twin(&ctx, s.name.as_str(), g, c);
        for k in cpu.tensor_state_names(s.name.as_str()).unwrap() {
            crate::common::assert_twin(
                &ctx,
                &format!("{} {k}", s.name.as_str()),
                &opt.read_state(k, s.name.as_str()).unwrap(),
                &cpu.read_state(k, s.name.as_str()).unwrap(),
            );
        }
    }
}

#[test]
fn without_params_the_arena_is_left_alone() {
    let specs = resume_specs();
    let (opt, _) = stepped_adam(&specs, 2);
    let ck = opt.save_checkpoint::<Vec<f32>>(None).unwrap();
    assert!(!ck.contains("a"));
    // Loading it with params asked for is refused (nothing to write), without is fine.
    let mut fresh = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    let mut p = Vec::new();
    assert!(matches!(
        fresh.load_checkpoint(&ck, Some(&mut p)),
        Err(Error::CheckpointMismatch(m)) if m.contains("no params")
    ));
    assert_eq!(fresh.step_count("b.weight").unwrap(), 0);
    fresh.load_checkpoint(&ck, None).unwrap();
    assert_eq!(fresh.step_count("b.weight").unwrap(), 2);
}

#[test]
fn step_counts_past_f32_precision_stay_exact() {
    // A step count above 2^24 is stored as F64, since an f32 would round it.
    let specs = vec![TensorSpec::new("w", 4)];
    let mut ck = Checkpoint::new();
    let opt = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    let base = opt.save_checkpoint::<Vec<f32>>(None).unwrap();
    for k in ["format", "optimizer", "param_groups", "wgpu_optim"] {
        ck.set_metadata(k, base.metadata(k).unwrap());
    }
    let big = (1u64 << 24) + 1;
    ck.insert_f64_scalar("w.step", big as f64);
    ck.insert_f32("w.exp_avg", &[4], &[0.1; 4]).unwrap();
    ck.insert_f32("w.exp_avg_sq", &[4], &[0.2; 4]).unwrap();
    let mut opt = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    opt.load_checkpoint(&ck, None).unwrap();
    assert_eq!(opt.step_count("w").unwrap(), big);
    let again = opt.save_checkpoint::<Vec<f32>>(None).unwrap();
    assert_eq!(again.get_scalar("w.step").unwrap(), big as f64);
}

// ---------------------------------------------------------------------------------------------
// Corrupt and mismatched files: each gives its error, and nothing changes.

/// A valid checkpoint of an Adam optimizer over `resume_specs` after 2 steps, with params.
fn valid() -> (Checkpoint, Vec<u8>) {
    let specs = resume_specs();
    let (opt, params) = stepped_adam(&specs, 2);
    let ck = opt.save_checkpoint(Some(&params)).unwrap();
    let bytes = ck.to_bytes().unwrap();
    (ck, bytes)
}

/// The header JSON of safetensors bytes, and the data after it.
fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn edit_header(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (mut h, data) = split(bytes);
    f(&mut h);
    join(&h, &data)
}

fn edit_groups(ck: &Checkpoint, f: impl FnOnce(&mut Vec<serde_json::Value>)) -> Checkpoint {
    let mut ck = ck.clone();
    let mut groups: Vec<serde_json::Value> =
        serde_json::from_str(ck.metadata("param_groups").unwrap()).unwrap();
    f(&mut groups);
    ck.set_metadata("param_groups", serde_json::Value::Array(groups).to_string());
    ck
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Corrupt,
    Mismatch,
    Hyper,
}

/// (what, bytes, expected error kind, a word the message must contain)
fn corrupt_table() -> Vec<(&'static str, Vec<u8>, Want, &'static str)> {
    let (ck, bytes) = valid();
    let re = |c: &Checkpoint| c.to_bytes().unwrap();
    let mut t: Vec<(&'static str, Vec<u8>, Want, &'static str)> = vec![
        ("empty file", Vec::new(), Want::Corrupt, "safetensors"),
        (
            "truncated to half",
            bytes[..bytes.len() / 2].to_vec(),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "truncated by one byte",
            bytes[..bytes.len() - 1].to_vec(),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "trailing garbage",
            [bytes.clone(), vec![0u8; 3]].concat(),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "header length past the end",
            {
                let mut b = bytes.clone();
                b[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
                b
            },
            Want::Corrupt,
            "safetensors",
        ),
        (
            "header length of 2^63",
            {
                let mut b = bytes.clone();
                b[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
                b
            },
            Want::Corrupt,
            "safetensors",
        ),
        (
            "header not JSON",
            {
                let mut b = bytes.clone();
                b[8] = b'#';
                b
            },
            Want::Corrupt,
            "safetensors",
        ),
        (
            "huge declared shape",
            edit_header(&bytes, |h| {
                h["b.weight.exp_avg"]["shape"] = serde_json::json!([u64::MAX / 2, 4]);
            }),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "overlapping offsets",
            edit_header(&bytes, |h| {
                let a = h["b.weight.exp_avg"]["data_offsets"].clone();
                h["b.weight.exp_avg_sq"]["data_offsets"] = a;
            }),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "shape disagrees with the byte count",
            edit_header(&bytes, |h| {
                h["b.weight.exp_avg"]["shape"] = serde_json::json!([256]);
            }),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "unknown dtype",
            edit_header(&bytes, |h| {
                h["b.weight.exp_avg"]["dtype"] = serde_json::json!("Q7");
            }),
            Want::Corrupt,
            "safetensors",
        ),
        (
            "state stored as I32",
            edit_header(&bytes, |h| {
                h["b.weight.exp_avg"]["dtype"] = serde_json::json!("I32");
            }),
            Want::Corrupt,
            "expected F32",
        ),
        (
            "no metadata",
            edit_header(&bytes, |h| {
                h.as_object_mut().unwrap().remove("__metadata__");
            }),
            Want::Corrupt,
            "format",
        ),
        (
            "unknown format",
            {
                let mut c = ck.clone();
                c.set_metadata("format", "pickle");
                re(&c)
            },
            Want::Corrupt,
            "format",
        ),
        (
            "param_groups not JSON",
            {
                let mut c = ck.clone();
                c.set_metadata("param_groups", "[{");
                re(&c)
            },
            Want::Corrupt,
            "param_groups",
        ),
        (
            "lr is NaN (null in JSON)",
            re(&edit_groups(&ck, |g| {
                g[0]["lr"] = serde_json::Value::Null;
            })),
            Want::Corrupt,
            "hyperparameters",
        ),
        (
            "negative lr",
            re(&edit_groups(&ck, |g| {
                g[0]["lr"] = serde_json::json!(-1.0);
            })),
            Want::Hyper,
            "lr",
        ),
        (
            "beta1 of 1",
            re(&edit_groups(&ck, |g| {
                g[0]["betas"] = serde_json::json!([1.0, 0.999]);
            })),
            Want::Hyper,
            "beta",
        ),
        (
            "betas not a pair",
            re(&edit_groups(&ck, |g| {
                g[0]["betas"] = serde_json::json!([0.9]);
            })),
            Want::Corrupt,
            "betas",
        ),
        (
            "unknown family",
            re(&edit_groups(&ck, |g| {
                g[0]["family"] = serde_json::json!("adamq");
            })),
            Want::Corrupt,
            "family",
        ),
        (
            "another family",
            re(&edit_groups(&ck, |g| {
                g[0]["family"] = serde_json::json!("sgd");
            })),
            Want::Mismatch,
            "runs adam",
        ),
        (
            "a group too many",
            re(&edit_groups(&ck, |g| {
                let extra = g[0].clone();
                g.push(extra);
            })),
            Want::Mismatch,
            "group(s)",
        ),
        (
            "a tensor missing from the group",
            re(&edit_groups(&ck, |g| {
                g[0]["params"].as_array_mut().unwrap().pop();
            })),
            Want::Mismatch,
            "not in the checkpoint",
        ),
        (
            "an unknown tensor in the group",
            re(&edit_groups(&ck, |g| {
                g[0]["params"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!("zzz"));
            })),
            Want::Mismatch,
            "zzz",
        ),
        (
            "amsgrad on (a state the optimizer did not allocate)",
            re(&edit_groups(&ck, |g| {
                g[0]["amsgrad"] = serde_json::json!(true);
            })),
            Want::Mismatch,
            "max_exp_avg_sq",
        ),
    ];
    let mut c = ck.clone();
    c.insert_f32("e.weight", &[2], &[1.0, 2.0]).unwrap();
    t.push(("an unknown tensor", re(&c), Want::Mismatch, "e.weight"));
    let mut c = ck.clone();
    c.insert_f32("b.weight.velocity", &[257], &[0.0; 257])
        .unwrap();
    t.push(("an unknown state key", re(&c), Want::Mismatch, "velocity"));
    let mut c = ck.clone();
    c.remove("b.weight.exp_avg_sq");
    t.push((
        "a missing state buffer",
        re(&c),
        Want::Mismatch,
        "exp_avg_sq",
    ));
    let mut c = ck.clone();
    c.remove("b.weight.step");
    t.push(("state without a step", re(&c), Want::Corrupt, "no step"));
    let mut c = ck.clone();
    c.insert_f32("b.weight.step", &[], &[-1.0]).unwrap();
    t.push(("a negative step", re(&c), Want::Corrupt, "step count"));
    let mut c = ck.clone();
    c.insert_f32("b.weight.step", &[], &[1.5]).unwrap();
    t.push(("a fractional step", re(&c), Want::Corrupt, "step count"));
    let mut c = ck.clone();
    c.insert_f32("b.weight.step", &[2], &[1.0, 1.0]).unwrap();
    t.push(("a step with two values", re(&c), Want::Corrupt, "one value"));
    let mut c = ck.clone();
    let v = c.get_f32("c.weight.exp_avg").unwrap();
    c.insert_f32("c.weight.exp_avg", &[241, 17], &v).unwrap();
    t.push(("a transposed state", re(&c), Want::Mismatch, "shape"));
    let mut c = ck.clone();
    c.insert_f32("b.weight", &[256], &[0.0; 256]).unwrap();
    t.push((
        "params of the wrong length",
        re(&c),
        Want::Mismatch,
        "shape",
    ));
    let mut c = ck.clone();
    c.set_metadata("wgpu_optim", r#"{"frozen": ["nope"], "train_mode": true}"#);
    t.push((
        "frozen names an unknown tensor",
        re(&c),
        Want::Mismatch,
        "nope",
    ));
    t
}

#[test]
fn every_corrupt_file_gives_its_error_and_changes_nothing() {
    let specs = resume_specs();
    for (what, bytes, want, word) in corrupt_table() {
        // A live optimizer that has stepped, so a partial load would show.
        let (mut opt, params) = stepped_adam(&specs, 3);
        let before = cpu_fingerprint(&opt, &params, &specs);
        let lr_before = opt.group_lr(0).unwrap();
        let path = temp_path("corrupt.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let r = Checkpoint::load(&path).and_then(|ck| {
            let mut p = params.clone();
            opt.load_checkpoint(&ck, Some(&mut p)).map(|_| p)
        });
        let err = match r {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => e,
        };
        let kind = match &err {
            Error::CorruptCheckpoint(_) => Want::Corrupt,
            Error::CheckpointMismatch(_) => Want::Mismatch,
            Error::InvalidHyperparameter { .. } => Want::Hyper,
            other => panic!("{what}: unexpected error {other:?}"),
        };
        assert_eq!(kind, want, "{what}: {err}");
        assert!(
            err.to_string().contains(word),
            "{what}: {err:?} should mention {word:?}"
        );
        assert_eq!(
            before,
            cpu_fingerprint(&opt, &params, &specs),
            "{what}: state changed"
        );
        assert_eq!(lr_before, opt.group_lr(0).unwrap(), "{what}: lr changed");
    }
}

#[test]
fn a_rejected_gpu_load_changes_nothing() {
    let Some(ctx) = gpu() else { return };
    let specs = resume_specs();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_all_params(&init_params(&specs)).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    gpu_steps(&mut opt, &arena, &specs, 0..3);
    let before = gpu_fingerprint(&opt, &arena, &specs);
    for (what, bytes, _, _) in corrupt_table() {
        let r =
            Checkpoint::from_bytes(&bytes).and_then(|ck| opt.load_checkpoint(&ck, Some(&arena)));
        assert!(r.is_err(), "{what}: loaded");
        assert_eq!(
            before,
            gpu_fingerprint(&opt, &arena, &specs),
            "{what}: changed the GPU"
        );
    }
    // A valid checkpoint of another optimizer kind (SGD) is refused too.
    let sgd = CpuOptimizer::new(SgdConfig::default(), &specs).unwrap();
    let ck = sgd.save_checkpoint::<Vec<f32>>(None).unwrap();
    assert!(matches!(
        opt.load_checkpoint(&ck, None),
        Err(Error::CheckpointMismatch(m)) if m.contains("runs adam")
    ));
    // An oversized file is refused before it is read.
    let path = temp_path("oversized.safetensors");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 40).unwrap();
    assert!(matches!(
        opt.load_checkpoint_file(&path, None),
        Err(Error::LimitExceeded { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(before, gpu_fingerprint(&opt, &arena, &specs));
}

#[test]
fn an_interrupted_write_leaves_the_old_checkpoint() {
    let specs = resume_specs();
    let (mut opt, mut params) = stepped_adam(&specs, 2);
    let path = temp_path("interrupted.safetensors");
    opt.save_checkpoint(Some(&params))
        .unwrap()
        .save(&path)
        .unwrap();
    let old = std::fs::read(&path).unwrap();

    cpu_steps(&mut opt, &mut params, &specs, 2..4);
    let newer = opt.save_checkpoint(Some(&params)).unwrap();
    // Written and fsynced, but the process "dies" before the rename.
    let pending = newer.write_pending(&path).unwrap();
    let tmp = pending.temp_path().to_path_buf();
    assert!(tmp.exists());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        old,
        "the target is untouched"
    );
    std::mem::forget(pending);
    let ck = Checkpoint::load(&path).unwrap();
    let mut fresh = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    fresh.load_checkpoint(&ck, None).unwrap();
    assert_eq!(
        fresh.step_count("a").unwrap(),
        2,
        "the old checkpoint (2 steps)"
    );
    std::fs::remove_file(&tmp).unwrap();

    // Dropped without commit: the temporary file goes; committed: the new one is in place.
    let pending = newer.write_pending(&path).unwrap();
    let tmp = pending.temp_path().to_path_buf();
    drop(pending);
    assert!(!tmp.exists());
    newer.write_pending(&path).unwrap().commit().unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    fresh.load_checkpoint(&ck, None).unwrap();
    for s in &specs {
        assert_eq!(
            fresh.step_count(&s.name).unwrap(),
            opt.step_count(&s.name).unwrap(),
            "the new checkpoint"
        );
    }
    assert_ne!(opt.step_count("a").unwrap(), 2);
    // Writing into a missing directory is an I/O error naming the file.
    let bad = temp_path("no-such-dir").join("x.safetensors");
    assert!(
        matches!(newer.save(&bad), Err(Error::Io { path, .. }) if path.contains("x.safetensors"))
    );
}

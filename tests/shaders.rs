//! Every composed shader parses and validates with naga, and the WGSL constants agree with
//! their Rust twins. Needs no GPU.

use wgpu_optim::shaders::{self, KernelDef};

fn validate(src: &str) -> Result<naga::valid::ModuleInfo, String> {
    validate_with(src, naga::valid::Capabilities::empty())
}

fn validate_with(
    src: &str,
    caps: naga::valid::Capabilities,
) -> Result<naga::valid::ModuleInfo, String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))
}

#[test]
fn every_kernel_validates_and_has_its_entry_point() {
    let all = wgpu_optim::optim::table::all_kernels();
    // Norm family, copy, and every pass of every optimizer in the table.
    assert!(all.len() >= 13, "{}", all.len());
    for k in all {
        let src = k.source;
        validate(src).unwrap_or_else(|e| panic!("{k:?}: {e}"));
        let module = naga::front::wgsl::parse_str(src).unwrap();
        assert!(
            module
                .entry_points
                .iter()
                .any(|e| e.name == k.entry_point()),
            "{k:?} has no entry point {}",
            k.entry_point()
        );
    }
}

#[test]
fn hypergradient_kernels_compose_the_shared_hd_file() {
    // SGD-HD and Adam-HD share their dot and lr passes through hd.wgsl, placed between
    // reduce.wgsl and the family file (after common.wgsl and the f32 storage prelude); hd.wgsl uses bindings the family file declares after it,
    // so each composition must validate on its own.
    use wgpu_optim::optim::{adam_hd, sgd_hd};
    let common = shaders::COMMON;
    let io = include_str!("../shaders/io_f32.wgsl");
    let reduce = include_str!("../shaders/reduce.wgsl");
    let shared = include_str!("../shaders/hd.wgsl");
    let families = [
        (
            [sgd_hd::SGD_HD_DOT, sgd_hd::SGD_HD_LR, sgd_hd::SGD_HD_STEP],
            include_str!("../shaders/sgd_hd.wgsl"),
        ),
        (
            [
                adam_hd::ADAM_HD_DOT,
                adam_hd::ADAM_HD_LR,
                adam_hd::ADAM_HD_STEP,
            ],
            include_str!("../shaders/adam_hd.wgsl"),
        ),
    ];
    for (kernels, family) in families {
        let composed = format!("{common}{io}{reduce}{shared}{family}");
        // The family file alone does not define the shared passes.
        assert!(!family.contains("fn hd_dot(") && !family.contains("fn hd_lr("));
        let module = naga::front::wgsl::parse_str(&composed).unwrap();
        for name in ["hd_dot", "hd_lr", "with_decay"] {
            assert!(
                module
                    .functions
                    .iter()
                    .any(|(_, f)| f.name.as_deref() == Some(name)),
                "{name} missing"
            );
        }
        for k in kernels {
            assert_eq!(
                k.source, composed,
                "{k:?} is not common + io_f32 + reduce + hd + family"
            );
            validate(k.source).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            assert!(module
                .entry_points
                .iter()
                .any(|e| e.name == k.entry_point()));
        }
    }
}

#[test]
fn invalid_wgsl_is_caught_by_the_validator() {
    // Guards against a validator that accepts anything: a type error must be reported.
    let bad = format!(
        "{}\nfn broken() -> f32 {{ return vec4<f32>(1.0); }}",
        shaders::COMMON
    );
    assert!(validate(&bad).is_err());
}

/// Reads `const NAME: u32 = <n>u;` (or an `override`'s default) from WGSL.
fn wgsl_const(src: &str, name: &str) -> u32 {
    let line = src
        .lines()
        .find(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("const {name}:")) || l.starts_with(&format!("override {name}:"))
        })
        .unwrap_or_else(|| panic!("const {name} not found"));
    let value = line.split('=').nth(1).unwrap().trim().trim_end_matches(';');
    value.trim_end_matches('u').parse().unwrap()
}

#[test]
fn wgsl_constants_match_rust_twins() {
    let c = shaders::COMMON;
    assert_eq!(wgsl_const(c, "WG_SIZE"), shaders::WG_SIZE);
    assert_eq!(wgsl_const(c, "VEC_PER_LANE"), shaders::VEC_PER_LANE);
    assert_eq!(wgsl_const(c, "CHUNK"), shaders::CHUNK);
    assert_eq!(wgsl_const(c, "FLAG_MAXIMIZE"), shaders::FLAG_MAXIMIZE);
    assert_eq!(wgsl_const(c, "FLAG_GRAD_SCALE"), shaders::FLAG_GRAD_SCALE);
    use wgpu_optim::optim::{adam, rmsprop, sgd};
    let s = sgd::SGD_STEP.source;
    assert_eq!(wgsl_const(s, "SGD_MOMENTUM"), sgd::SGD_MOMENTUM);
    assert_eq!(wgsl_const(s, "SGD_NESTEROV"), sgd::SGD_NESTEROV);
    let a = adam::ADAM_STEP.source;
    assert_eq!(wgsl_const(a, "ADAM_AMSGRAD"), adam::ADAM_AMSGRAD);
    assert_eq!(wgsl_const(a, "ADAM_DECOUPLED"), adam::ADAM_DECOUPLED);
    let r = rmsprop::RMSPROP_STEP.source;
    assert_eq!(wgsl_const(r, "RMS_CENTERED"), rmsprop::RMS_CENTERED);
    assert_eq!(wgsl_const(r, "RMS_MOMENTUM"), rmsprop::RMS_MOMENTUM);
    use wgpu_optim::optim::{lamb, lars};
    let l = lars::LARS_STEP.source;
    assert_eq!(wgsl_const(l, "RED_SIZE"), shaders::RED_SIZE);
    assert_eq!(wgsl_const(l, "RED_LANES"), shaders::RED_LANES);
    assert_eq!(wgsl_const(l, "RED_VEC"), shaders::RED_VEC);
    assert_eq!(shaders::RED_LANES * shaders::RED_VEC * 4, shaders::CHUNK);
    assert_eq!(wgsl_const(l, "LARS_MOMENTUM"), lars::LARS_MOMENTUM);
    assert_eq!(wgsl_const(l, "LARS_NESTEROV"), lars::LARS_NESTEROV);
    assert_eq!(wgsl_const(l, "LARS_TRUST_CLIP"), lars::LARS_TRUST_CLIP);
    let b = lamb::LAMB_APPLY.source;
    assert_eq!(wgsl_const(b, "LAMB_TRUST_CLIP"), lamb::LAMB_TRUST_CLIP);
    let n = shaders::NORM_GLOBAL.source;
    assert_eq!(wgsl_const(n, "NORM_HAS_B"), wgpu_optim::norm::NORM_HAS_B);
    assert_eq!(wgsl_const(n, "NORM_INF"), wgpu_optim::norm::NORM_INF);
    assert_eq!(wgsl_const(n, "NORM_CLIP"), wgpu_optim::norm::NORM_CLIP);
}

#[test]
fn uniform_structs_have_the_wgsl_sizes() {
    use std::mem::size_of;
    use wgpu_optim::optim::{adagrad, adam, rmsprop, sgd};
    // Sizes naga computes for the WGSL structs must equal the Rust mirrors.
    use wgpu_optim::optim::{lamb, lars};
    let cases: [(KernelDef, &str, usize); 15] = [
        (lars::LARS_STEP, "LarsHyper", size_of::<lars::LarsHyper>()),
        (lars::LARS_STEP, "LarsTensor", size_of::<lars::LarsTensor>()),
        (lamb::LAMB_APPLY, "LambHyper", size_of::<lamb::LambHyper>()),
        (
            lamb::LAMB_APPLY,
            "LambTensor",
            size_of::<lamb::LambTensor>(),
        ),
        (
            shaders::NORM_GLOBAL,
            "NormHyper",
            size_of::<wgpu_optim::norm::NormHyper>(),
        ),
        (
            sgd::SGD_STEP,
            "Window",
            size_of::<wgpu_optim::arena::WindowUniform>(),
        ),
        (
            shaders::NORM_GLOBAL,
            "ChunkRange",
            size_of::<wgpu_optim::optim::ChunkRange>(),
        ),
        (sgd::SGD_STEP, "SgdHyper", size_of::<sgd::SgdHyper>()),
        (sgd::SGD_STEP, "SgdTensor", size_of::<sgd::SgdTensor>()),
        (adam::ADAM_STEP, "AdamHyper", size_of::<adam::AdamHyper>()),
        (adam::ADAM_STEP, "AdamTensor", size_of::<adam::AdamTensor>()),
        (
            rmsprop::RMSPROP_STEP,
            "RmspropHyper",
            size_of::<rmsprop::RmspropHyper>(),
        ),
        (
            rmsprop::RMSPROP_STEP,
            "RmspropTensor",
            size_of::<rmsprop::RmspropTensor>(),
        ),
        (
            adagrad::ADAGRAD_STEP,
            "AdagradHyper",
            size_of::<adagrad::AdagradHyper>(),
        ),
        (
            adagrad::ADAGRAD_STEP,
            "AdagradTensor",
            size_of::<adagrad::AdagradTensor>(),
        ),
    ];
    crate::common::naga_sizes::assert_wgsl_sizes(&cases, false);
    // A chunk row is read as one vec4<u32> in common.wgsl.
    assert_eq!(size_of::<wgpu_optim::arena::ChunkEntry>(), 16);
    assert_eq!(size_of::<wgpu_optim::arena::WindowUniform>(), 32);
}

#[test]
fn lookahead_sync_validates_and_matches_its_rust_twins() {
    use std::mem::size_of;
    use wgpu_optim::lookahead as la;
    let k = la::LOOKAHEAD_SYNC_KERNEL;
    assert!(wgpu_optim::optim::table::all_kernels().contains(&k));
    validate(k.source).unwrap_or_else(|e| panic!("{k:?}: {e}"));
    assert_eq!(wgsl_const(k.source, "LOOKAHEAD_SKIP"), la::LOOKAHEAD_SKIP);
    assert_eq!(wgsl_const(k.source, "LOOKAHEAD_SYNC"), la::LOOKAHEAD_SYNC);
    assert_eq!(wgsl_const(k.source, "LOOKAHEAD_INIT"), la::LOOKAHEAD_INIT);
    crate::common::naga_sizes::assert_wgsl_sizes(
        &[
            (k, "LookaheadHyper", size_of::<la::LookaheadHyper>()),
            (k, "LookaheadTensor", size_of::<la::LookaheadTensor>()),
        ],
        true,
    );
}

#[test]
fn matmul_constants_and_problem_row_match_rust_twins() {
    use wgpu_optim::matmul;
    let s = shaders::MATMUL.source;
    assert_eq!(wgsl_const(s, "MM_TILE"), matmul::MM_TILE);
    assert_eq!(wgsl_const(s, "MM_BK"), matmul::MM_BK);
    assert_eq!(wgsl_const(s, "MM_TRANS_A"), matmul::MM_TRANS_A);
    assert_eq!(wgsl_const(s, "MM_TRANS_B"), matmul::MM_TRANS_B);
    assert_eq!(wgsl_const(s, "MM_HAS_D"), matmul::MM_HAS_D);
    crate::common::naga_sizes::assert_wgsl_sizes(
        &[(
            shaders::MATMUL,
            "MatmulProblem",
            std::mem::size_of::<matmul::GpuProblem>(),
        )],
        false,
    );
}

#[test]
fn muon_structs_match_rust_twins() {
    use std::mem::size_of;
    use wgpu_optim::optim::muon;
    let k = muon::MUON_MOMENTUM;
    assert_eq!(wgsl_const(k.source, "MUON_WG"), muon::MUON_WG);
    assert_eq!(wgsl_const(k.source, "MUON_NESTEROV"), muon::MUON_NESTEROV);
    assert_eq!(
        wgsl_const(k.source, "FLAG_GRAD_SCALE"),
        shaders::FLAG_GRAD_SCALE
    );
    crate::common::naga_sizes::assert_wgsl_sizes(
        &[
            (k, "MuonHyper", size_of::<muon::MuonHyper>()),
            (k, "MuonBatch", size_of::<muon::MuonBatch>()),
            (k, "MuonGpuTensor", size_of::<muon::MuonGpuTensor>()),
        ],
        false,
    );
}

#[test]
fn adafactor_structs_match_rust_twins() {
    use std::mem::size_of;
    use wgpu_optim::optim::adafactor;
    let k = adafactor::ADAFACTOR_STEP;
    assert_eq!(
        wgsl_const(k.source, "ADAFACTOR_WG"),
        adafactor::ADAFACTOR_WG
    );
    assert_eq!(
        wgsl_const(k.source, "FLAG_MAXIMIZE"),
        shaders::FLAG_MAXIMIZE
    );
    assert_eq!(
        wgsl_const(k.source, "FLAG_GRAD_SCALE"),
        shaders::FLAG_GRAD_SCALE
    );
    crate::common::naga_sizes::assert_wgsl_sizes(
        &[
            (k, "AdafactorHyper", size_of::<adafactor::AdafactorHyper>()),
            (k, "AdafactorBatch", size_of::<adafactor::AdafactorBatch>()),
            (
                k,
                "AdafactorGpuTensor",
                size_of::<adafactor::AdafactorGpuTensor>(),
            ),
        ],
        false,
    );
}

#[test]
fn every_mixed_precision_variant_validates_and_binds_the_model_copy() {
    let mut n = 0;
    for k in wgpu_optim::optim::table::all_kernels() {
        let Some(m) = k.mixed(wgpu_optim::HalfPath::Packed) else {
            continue;
        };
        validate(m.source).unwrap_or_else(|e| panic!("{m:?} (packed16): {e}"));
        assert_ne!(m, k, "the variants are different pipeline-cache keys");
        if matches!(k.layout, shaders::LayoutKind::Norm) {
            // The norms over 16-bit gradients bind no model copy.
            assert_eq!(m.bindings(), k.bindings());
            continue;
        }
        n += 1;
        assert!(m
            .source
            .contains("var<storage, read_write> model: array<vec2<u32>>"));
        assert!(m.bindings().contains(&(11, shaders::BindKind::ReadWrite)));
        assert_eq!(m.storage_buffers(), k.storage_buffers() + 1, "{m:?}");
        assert_ne!(m, k, "the variants are different pipeline-cache keys");
    }
    // Every optimizer pass of the table has one (Muon's passes do not).
    assert!(n >= 25, "{n}");
    // The native-f16 compositions need naga's f16 capability, and only that.
    let mut native = 0;
    for k in wgpu_optim::optim::table::all_kernels() {
        let Some(m) = k.mixed(wgpu_optim::HalfPath::Native) else {
            continue;
        };
        native += 1;
        assert!(m.source.starts_with("// enable_f16.wgsl"));
        assert!(validate(m.source).is_err(), "{m:?} validates without f16");
        validate_with(m.source, naga::valid::Capabilities::SHADER_FLOAT16)
            .unwrap_or_else(|e| panic!("{m:?} (native16): {e}"));
        assert!(m.bindings().contains(&(11, shaders::BindKind::ReadWrite)));
        assert_ne!(m, k.mixed(wgpu_optim::HalfPath::Packed).unwrap());
    }
    assert_eq!(native, n);
    // The model copy over f32 gradients: the same kernels, f32 grads at 6.
    let mut over_f32 = 0;
    for k in wgpu_optim::optim::table::all_kernels() {
        let Some(m) = k.mixed_f32_grads() else {
            continue;
        };
        over_f32 += 1;
        validate(m.source).unwrap_or_else(|e| panic!("{m:?} (model16): {e}"));
        assert!(m
            .source
            .contains("var<storage, read> grads: array<vec4<f32>>"));
        assert_eq!(m.storage_buffers(), k.storage_buffers() + 1, "{m:?}");
        assert_ne!(m, k.mixed(wgpu_optim::HalfPath::Packed).unwrap());
    }
    assert_eq!(over_f32, n);
    assert!(shaders::NORM_GLOBAL
        .mixed(wgpu_optim::HalfPath::Native)
        .is_none());
}

/// The storage-buffer budget the README documents for each mode (f32 / 16-bit), from the
/// kernels' own binding lists.
#[test]
fn storage_buffer_budget_matches_the_readme() {
    let want: &[(&str, u32)] = &[
        ("sgd_step", 6),
        ("adagrad_step", 6),
        ("asgd_step", 6),
        ("adadelta_step", 7),
        ("rprop_step", 7),
        ("nadam_step", 7),
        ("radam_step", 7),
        ("adamax_step", 7),
        ("lars_step", 7),
        ("lion_step", 7),
        ("schedule_free_adamw_step", 7),
        ("adam_step", 8),
        ("rmsprop_step", 8),
        ("lamb_apply", 8),
        ("adopt_step", 8),
        ("sgd_hd_step", 8),
        ("adam_hd_step", 9),
    ];
    let all = wgpu_optim::optim::table::all_kernels();
    for &(entry, f32_count) in want {
        let k = all.iter().find(|k| k.entry_point() == entry).unwrap();
        assert_eq!(k.storage_buffers(), f32_count, "{entry} f32");
        for path in [wgpu_optim::HalfPath::Packed, wgpu_optim::HalfPath::Native] {
            let m = k.mixed(path).unwrap();
            assert_eq!(m.storage_buffers(), f32_count + 1, "{entry} {path:?}");
        }
    }
    for k in [
        shaders::NORM_PARTIALS,
        shaders::NORM_COMBINE,
        shaders::NORM_GLOBAL,
    ] {
        assert_eq!(k.storage_buffers(), 6);
        let m = k.mixed(wgpu_optim::HalfPath::Packed).unwrap();
        assert_eq!(m.storage_buffers(), 6);
    }
}

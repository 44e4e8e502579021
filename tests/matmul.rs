//! The batched matmul (shaders/matmul.wgsl, src/matmul.rs): the CPU twin against an f64
//! product within the recursive-summation bound, the GPU against the CPU twin (bit for bit on
//! lavapipe, within `matmul_error_bound` elsewhere) for every shape of the issue and every
//! transpose / epilogue form, a 100-problem stage in one dispatch, the 2-D grid spill, bitwise
//! reruns, and every bad input's typed error.

use crate::common::{exact_adapter, gpu, gpu_with, randn};
use wgpu_optim::matmul::{matmul_cpu, matmul_error_bound, validate, MatmulProblem};
use wgpu_optim::{BatchedMatmul, ContextOptions, Error, GpuContext};

/// Hands out regions of one flat buffer, each starting where the last ended plus a small gap
/// (so an off-by-one write lands in a gap the test checks is untouched).
struct Bump(u32);
impl Bump {
    fn take(&mut self, len: u64) -> u32 {
        let at = self.0;
        self.0 += len as u32 + 3;
        at
    }
}

/// A problem of shape m×n×k with fresh A, B (and D) regions and every option given.
fn problem(bump: &mut Bump, m: u32, n: u32, k: u32, ta: bool, tb: bool, d: bool) -> MatmulProblem {
    let (m64, n64, k64) = (m as u64, n as u64, k as u64);
    let a = bump.take(m64 * k64);
    let b = bump.take(k64 * n64);
    let c = bump.take(m64 * n64);
    let mut p = MatmulProblem::new(m, n, k, a, b, c).alpha(0.75);
    if ta {
        p = p.transpose_a();
    }
    if tb {
        p = p.transpose_b();
    }
    if d {
        p = p.plus(-1.25, bump.take(m64 * n64));
    }
    p
}

fn storage(ctx: &GpuContext, data: &[f32]) -> wgpu::Buffer {
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test matmul data"),
        size: (data.len() as u64 * 4).max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buf, 0, bytemuck::cast_slice(data));
    buf
}

/// Runs the stage on the GPU over `data` and reads the whole buffer back.
fn run_gpu(ctx: &GpuContext, problems: &[MatmulProblem], data: &[f32]) -> Vec<f32> {
    let buf = storage(ctx, data);
    let mm = BatchedMatmul::new(ctx, problems, &buf).expect("stage builds");
    mm.run().unwrap();
    ctx.wait().unwrap();
    wgpu_optim::readback::read_f32(ctx, &buf, 0, data.len()).unwrap()
}

/// GPU output against the CPU twin: bit for bit on lavapipe, else within the stated bound.
fn assert_gpu_matches_cpu(ctx: &GpuContext, what: &str, problems: &[MatmulProblem], data: &[f32]) {
    let mut cpu = data.to_vec();
    matmul_cpu(problems, &mut cpu).unwrap();
    let gpu = run_gpu(ctx, problems, data);
    if exact_adapter(ctx) {
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_eq!(
                g.to_bits(),
                c.to_bits(),
                "{what}: element {i}: gpu {g} cpu {c}"
            );
        }
        return;
    }
    for (pi, p) in problems.iter().enumerate() {
        let bound = matmul_error_bound(p, data);
        let c0 = p.c_offset as usize;
        for (e, &b) in bound.iter().enumerate() {
            let (g, c) = (gpu[c0 + e], cpu[c0 + e]);
            assert!(
                (g - c).abs() <= b,
                "{what}: problem {pi} element {e}: gpu {g} cpu {c} bound {b}"
            );
        }
    }
    // Outside the outputs nothing moved.
    let mut outside = vec![true; data.len()];
    for p in problems {
        let c0 = p.c_offset as usize;
        outside[c0..c0 + (p.m * p.n) as usize].fill(false);
    }
    for (i, keep) in outside.iter().enumerate() {
        if *keep {
            assert_eq!(
                gpu[i].to_bits(),
                data[i].to_bits(),
                "{what}: element {i} outside C"
            );
        }
    }
}

/// The f64 product of one problem and its recursive-summation bound for the f32 twin.
fn check_twin_against_f64(p: &MatmulProblem, before: &[f32], after: &[f32]) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let u = f32::EPSILON as f64 / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for l in 0..k {
                let a = if p.transpose_a {
                    before[p.a_offset as usize + l * m + i]
                } else {
                    before[p.a_offset as usize + i * k + l]
                } as f64;
                let b = if p.transpose_b {
                    before[p.b_offset as usize + j * k + l]
                } else {
                    before[p.b_offset as usize + l * n + j]
                } as f64;
                sum += a * b;
                abs += (a * b).abs();
            }
            let mut want = p.alpha as f64 * sum;
            let mut scale = (p.alpha as f64).abs() * abs;
            if let Some(d) = p.d_offset {
                let dv = p.beta as f64 * before[d as usize + i * n + j] as f64;
                want += dv;
                scale += dv.abs();
            }
            // gamma_k for the sum, plus the products and the epilogue's two roundings.
            let tol = (k as f64 + 3.0) * 1.01 * u * scale;
            let got = after[p.c_offset as usize + i * n + j] as f64;
            assert!(
                (got - want).abs() <= tol,
                "{p:?} ({i},{j}): got {got} want {want} tol {tol}"
            );
        }
    }
}

/// The shapes of the issue (C's m×n), each with several k.
const SHAPES: &[(u32, u32)] = &[
    (1, 1),
    (1, 300),
    (300, 1),
    (17, 33),
    (64, 64),
    (257, 129),
    (1024, 96),
];
const KS: &[u32] = &[1, 33, 96];

fn all_forms(m: u32, n: u32, k: u32, bump: &mut Bump) -> Vec<MatmulProblem> {
    let mut out = Vec::new();
    for ta in [false, true] {
        for tb in [false, true] {
            for d in [false, true] {
                out.push(problem(bump, m, n, k, ta, tb, d));
            }
        }
    }
    out
}

fn random_data(rng: &mut fastrand::Rng, len: u32) -> Vec<f32> {
    randn(rng, len as usize, 1.0)
}

#[test]
fn cpu_twin_matches_the_f64_product_within_the_summation_bound() {
    let mut rng = fastrand::Rng::with_seed(1);
    for &(m, n) in SHAPES {
        for &k in KS {
            let mut bump = Bump(5);
            let problems = all_forms(m, n, k, &mut bump);
            let before = random_data(&mut rng, bump.0);
            let mut after = before.clone();
            matmul_cpu(&problems, &mut after).unwrap();
            for p in &problems {
                check_twin_against_f64(p, &before, &after);
            }
        }
    }
}

#[test]
fn every_shape_and_form_matches_the_cpu_twin() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(2);
    for &(m, n) in SHAPES {
        for &k in KS {
            let mut bump = Bump(1);
            // All eight forms (transposes x epilogue) of the shape in one stage.
            let problems = all_forms(m, n, k, &mut bump);
            let data = random_data(&mut rng, bump.0);
            assert_gpu_matches_cpu(&ctx, &format!("{m}x{n}x{k}"), &problems, &data);
        }
    }
}

/// 100 problems of mixed shapes and forms, including Newton–Schulz's three (X·Xᵀ,
/// c·A·A + b·A, B·X + a·X), in one dispatch.
fn hundred(rng: &mut fastrand::Rng, bump: &mut Bump) -> Vec<MatmulProblem> {
    let dims = [1u32, 2, 3, 5, 8, 17, 31, 32, 33, 64, 65, 100, 129];
    let mut out = Vec::new();
    while out.len() < 100 {
        let pick = |rng: &mut fastrand::Rng| dims[rng.usize(..dims.len())];
        let (m, n, k) = (pick(rng), pick(rng), pick(rng));
        match out.len() % 4 {
            // A = X·Xᵀ for an m×k X: B is X itself, stored n×k = m×k.
            0 => {
                let x = bump.take(m as u64 * k as u64);
                let c = bump.take(m as u64 * m as u64);
                out.push(MatmulProblem::new(m, m, k, x, x, c).transpose_b());
            }
            // B = c·A·A + b·A on a square A.
            1 => {
                let a = bump.take(m as u64 * m as u64);
                let c = bump.take(m as u64 * m as u64);
                out.push(
                    MatmulProblem::new(m, m, m, a, a, c)
                        .alpha(2.0315)
                        .plus(-4.775, a),
                );
            }
            // D at C itself: an in-place epilogue.
            2 => {
                let mut p = problem(bump, m, n, k, rng.bool(), rng.bool(), false);
                p = p.plus(3.4445, p.c_offset);
                out.push(p);
            }
            _ => out.push(problem(bump, m, n, k, rng.bool(), rng.bool(), rng.bool())),
        }
    }
    out
}

#[test]
fn a_hundred_mixed_problems_in_one_dispatch() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(3);
    let mut bump = Bump(0);
    let problems = hundred(&mut rng, &mut bump);
    let data = random_data(&mut rng, bump.0);
    let buf = storage(&ctx, &data);
    let mm = BatchedMatmul::new(&ctx, &problems, &buf).unwrap();
    assert_eq!(mm.problems().len(), 100);
    assert!(mm.tiles() > 100, "{} tiles", mm.tiles());
    assert_gpu_matches_cpu(&ctx, "100 problems", &problems, &data);
    // And the CPU twin of that stage is the f64 product within the bound.
    let mut after = data.clone();
    matmul_cpu(&problems, &mut after).unwrap();
    for p in &problems {
        check_twin_against_f64(p, &data, &after);
    }
}

#[test]
fn batched_equals_one_problem_at_a_time_and_reruns_are_bitwise() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(4);
    let mut bump = Bump(0);
    let problems = hundred(&mut rng, &mut bump);
    let data = random_data(&mut rng, bump.0);
    let first = run_gpu(&ctx, &problems, &data);
    for _ in 0..2 {
        let again = run_gpu(&ctx, &problems, &data);
        assert!(
            crate::common::bits_eq(&first, &again),
            "a rerun changed bits"
        );
    }
    // Each problem alone gives the bits it gave in the batch.
    for (i, p) in problems.iter().enumerate().step_by(7) {
        let alone = run_gpu(&ctx, std::slice::from_ref(p), &data);
        let c = p.c_offset as usize..(p.c_offset + p.m * p.n) as usize;
        assert!(
            crate::common::bits_eq(&alone[c.clone()], &first[c]),
            "problem {i} alone differs from the batch"
        );
    }
}

#[test]
fn grids_past_the_workgroup_cap_spill_into_y() {
    // A cap of 3 workgroups in x makes a 2-D grid of any stage with more than 3 tiles.
    let Some(ctx) = gpu_with(ContextOptions {
        max_workgroups_per_dim: Some(3),
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let mut bump = Bump(0);
    let problems = vec![
        problem(&mut bump, 257, 129, 40, false, true, true),
        problem(&mut bump, 1, 1, 3, false, false, false),
        problem(&mut bump, 33, 65, 7, true, false, false),
    ];
    let data = random_data(&mut rng, bump.0);
    assert_gpu_matches_cpu(&ctx, "spilled grid", &problems, &data);
}

#[test]
fn degenerate_problems_and_the_empty_stage() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(6);
    let mut bump = Bump(0);
    // k = 0: C = beta·D, or 0; m = 0 and n = 0: nothing to write.
    let problems = vec![
        problem(&mut bump, 5, 7, 0, false, false, true),
        problem(&mut bump, 3, 2, 0, false, false, false),
        problem(&mut bump, 0, 9, 4, false, false, true),
        problem(&mut bump, 9, 0, 4, true, true, false),
    ];
    let data = random_data(&mut rng, bump.0);
    assert_gpu_matches_cpu(&ctx, "degenerate", &problems, &data);
    let mut cpu = data.clone();
    matmul_cpu(&problems, &mut cpu).unwrap();
    let p = problems[1];
    assert!(cpu[p.c_offset as usize..(p.c_offset + 6) as usize]
        .iter()
        .all(|&x| x == 0.0));
    let buf = storage(&ctx, &data);
    let empty = BatchedMatmul::new(&ctx, &[], &buf).unwrap();
    assert_eq!((empty.tiles(), empty.flops()), (0, 0));
    empty.run().unwrap();
    ctx.wait().unwrap();
    let back = wgpu_optim::readback::read_f32(&ctx, &buf, 0, data.len()).unwrap();
    assert!(crate::common::bits_eq(&back, &data));
}

#[test]
fn bad_stages_are_typed_errors_and_change_nothing() {
    let len = 1000u64;
    let ok = MatmulProblem::new(4, 5, 6, 0, 24, 100);
    assert_eq!(validate(&[ok], len).unwrap(), 120);
    let invalid = |ps: &[MatmulProblem], which: usize| match validate(ps, len) {
        Err(Error::InvalidMatmul { problem, .. }) => assert_eq!(problem, which, "{ps:?}"),
        other => panic!("{ps:?}: {other:?}"),
    };
    // Past the end: A, B, C, D in turn.
    invalid(&[MatmulProblem::new(4, 5, 6, 990, 24, 100)], 0);
    invalid(&[MatmulProblem::new(4, 5, 6, 0, 980, 100)], 0);
    invalid(&[MatmulProblem::new(4, 5, 6, 0, 24, 990)], 0);
    invalid(&[ok.plus(1.0, 995)], 0);
    // C over its own A, over another problem's B, over another problem's C.
    invalid(&[MatmulProblem::new(4, 5, 6, 0, 24, 10)], 0);
    invalid(&[ok, MatmulProblem::new(2, 2, 2, 200, 210, 20)], 0);
    invalid(&[ok, MatmulProblem::new(2, 2, 2, 200, 210, 118)], 1);
    // Another problem reading this one's output (the error names the reader).
    invalid(&[ok, MatmulProblem::new(2, 2, 2, 101, 300, 400)], 1);
    // D partly over C, or D equal to another problem's C.
    invalid(&[ok.plus(1.0, 101)], 0);
    invalid(
        &[
            ok,
            MatmulProblem::new(4, 5, 1, 300, 310, 400).plus(1.0, 100),
        ],
        1,
    );
    // D exactly at C is fine.
    validate(&[ok.plus(2.0, 100)], len).unwrap();
    // Non-finite scales.
    assert!(matches!(
        validate(&[ok.alpha(f32::NAN)], len),
        Err(Error::InvalidHyperparameter { name: "alpha", .. })
    ));
    assert!(matches!(
        validate(&[ok.plus(f32::INFINITY, 100)], len),
        Err(Error::InvalidHyperparameter { name: "beta", .. })
    ));
    // The CPU twin refuses the same and leaves the data as it was.
    let mut data: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let before = data.clone();
    assert!(matmul_cpu(&[ok, MatmulProblem::new(2, 2, 2, 101, 300, 400)], &mut data).is_err());
    assert_eq!(data, before);

    let Some(ctx) = gpu() else { return };
    let buf = storage(&ctx, &data);
    assert!(matches!(
        BatchedMatmul::new(&ctx, &[MatmulProblem::new(4, 5, 6, 990, 24, 100)], &buf),
        Err(Error::InvalidMatmul { problem: 0, .. })
    ));
    // A buffer the kernel cannot bind.
    let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test not storage"),
        size: 4096,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    assert!(matches!(
        BatchedMatmul::new(&ctx, &[ok], &uniform),
        Err(Error::Unsupported(_))
    ));
    // A stage that would bind more than the device's storage-binding limit (capped low here;
    // lavapipe's own is 128 MiB).
    let Some(small) = gpu_with(ContextOptions {
        max_binding_bytes: Some(256),
        ..Default::default()
    }) else {
        return;
    };
    let big = storage(&small, &data);
    match BatchedMatmul::new(&small, &[ok], &big) {
        Err(Error::BufferTooLarge { bytes, limit, .. }) => assert_eq!((bytes, limit), (480, 256)),
        other => panic!("{other:?}"),
    }
    // So does a problem table past the cap: 6 problems of 48 bytes. (The tile table, 16 bytes
    // per tile of at least 32 output elements but for one-tile problems, never outgrows both.)
    let tiny: Vec<MatmulProblem> = (0..6)
        .map(|i| MatmulProblem::new(1, 1, 1, 0, 1, 2 + i))
        .collect();
    match BatchedMatmul::new(&small, &tiny, &big) {
        Err(Error::BufferTooLarge { what, bytes, .. }) => {
            assert_eq!((what.as_str(), bytes), ("matmul problem table", 288))
        }
        other => panic!("{other:?}"),
    }
    // Within the cap it builds and runs.
    let fits = MatmulProblem::new(2, 2, 2, 0, 4, 8);
    BatchedMatmul::new(&small, &[fits], &big).unwrap();
    let back = wgpu_optim::readback::read_f32(&ctx, &buf, 0, data.len()).unwrap();
    assert_eq!(back, before, "a refused stage wrote to the buffer");
}

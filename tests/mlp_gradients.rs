//! The GPU MLP of examples/train_digits.rs: its kernels validate (no GPU needed), its loss and
//! gradients match a CPU f64 forward pass and central finite differences of it, and a few
//! training steps with a library optimizer lower the loss.

// The example's GPU MLP and CPU reference; each user of the module uses part of it.
#[allow(dead_code)]
#[path = "../examples/train_digits/mlp.rs"]
mod mlp;

use mlp::{Dataset, Mlp, Params};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{GpuContext, Optimizer, OptimizerConfig, ParamArena};

/// Finite-difference step (f64 forward pass, so roundoff is ~1e-16 / H).
const H: f64 = 1e-5;
/// |gpu - fd| must be within ATOL + RTOL * |fd| for every parameter.
const ATOL: f64 = 5e-7;
const RTOL: f64 = 1e-4;

#[test]
fn mlp_shader_validates_with_its_entry_points() {
    let module = naga::front::wgsl::parse_str(mlp::SHADER)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(mlp::SHADER)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(mlp::SHADER)));
    for entry in [
        "gather",
        "linear_forward",
        "softmax_xent",
        "linear_backward_input",
        "linear_backward_params",
    ] {
        assert!(
            module.entry_points.iter().any(|e| e.name == entry),
            "no entry point {entry}"
        );
    }
}

#[test]
fn digits_data_has_1797_images_about_180_per_class() {
    let data = Dataset::digits().unwrap();
    assert_eq!(data.len(), 1797);
    let counts = data.class_counts(0..1797);
    assert!(
        counts.iter().all(|&c| (170..=190).contains(&c)),
        "{counts:?}"
    );
    let (train, test) = mlp::split(&data, 36, 1);
    assert_eq!((train.len(), test.len()), (1437, 360));
    assert_eq!(data.class_counts(test.iter().copied()), [36; 10]);
    let mut all: Vec<u32> = train.iter().chain(&test).copied().collect();
    all.sort_unstable();
    assert!(all.iter().enumerate().all(|(i, &v)| i as u32 == v));
}

/// Runs training batch 0 (rows `train.len()` < capacity `batch`) and returns the GPU loss
/// sum, correct count and gradients.
fn gpu_batch(ctx: &GpuContext, arena: &ParamArena, model: &Mlp) -> (mlp::Acc, Params) {
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    model.encode_reset(&mut enc);
    model.encode_train_batch(&mut enc, 0);
    model.encode_snapshot(&mut enc);
    ctx.queue().submit([enc.finish()]);
    let acc = model.read_snapshot().unwrap()[mlp::TRAIN_SLOT];
    (acc, Params::read(arena, true).unwrap())
}

#[test]
fn gradients_match_central_finite_differences_of_a_cpu_forward_pass() {
    let Some(ctx) = crate::common::gpu() else {
        return;
    };
    let data = Dataset::digits().unwrap();
    // 11 real images (every class), in a batch of capacity 16: the partial-batch path.
    let rows: Vec<u32> = (0..11).map(|i| i * 7).collect();
    let arena = ParamArena::new(&ctx, &mlp::specs()).unwrap();
    // Random weights, larger than the default init so the logits and ReLUs are far from flat.
    let mut p = Params::init(7);
    for v in p.w1.iter_mut().chain(&mut p.w2) {
        *v *= 3.0;
    }
    for v in p.b1.iter_mut().chain(&mut p.b2) {
        *v = (*v * 7.3).sin() * 0.3;
    }
    p.write(&arena).unwrap();
    let model = Mlp::new(&ctx, &arena, &data, &rows, &[], 16).unwrap();
    assert_eq!(model.train_batches(), 1);
    let (acc, g) = gpu_batch(&ctx, &arena, &model);

    let theta = p.to_f64();
    let (loss, correct, signs) = mlp::cpu_forward(&theta, &data, &rows);
    assert_eq!(acc.count, rows.len() as f64);
    assert!(
        (acc.loss() - loss).abs() <= 1e-5 * loss.abs(),
        "GPU loss {} vs CPU {loss}",
        acc.loss()
    );
    assert_eq!(acc.correct as usize, correct, "correct count");
    assert!(
        loss > 0.5,
        "loss {loss}: a random model should be far from perfect"
    );

    let gpu = g.to_f64();
    let names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];
    let lens = [
        mlp::HIDDEN * mlp::INPUTS,
        mlp::HIDDEN,
        mlp::CLASSES * mlp::HIDDEN,
        mlp::CLASSES,
    ];
    let mut kinks = 0;
    let mut worst = [(0.0f64, 0usize); 4];
    let mut base = 0;
    let mut t = theta.clone();
    for (tensor, &len) in lens.iter().enumerate() {
        for i in base..base + len {
            t[i] = theta[i] + H;
            let (lp, _, sp) = mlp::cpu_forward(&t, &data, &rows);
            t[i] = theta[i] - H;
            let (lm, _, sm) = mlp::cpu_forward(&t, &data, &rows);
            t[i] = theta[i];
            if sp != signs || sm != signs {
                kinks += 1; // the difference crosses a ReLU kink: not a derivative
                continue;
            }
            let fd = (lp - lm) / (2.0 * H);
            let err = (gpu[i] - fd).abs();
            let tol = ATOL + RTOL * fd.abs();
            assert!(
                err <= tol,
                "{}[{}]: GPU gradient {} vs finite difference {fd} (|diff| {err:e} > {tol:e})",
                names[tensor],
                i - base,
                gpu[i]
            );
            if err > worst[tensor].0 {
                worst[tensor] = (err, i - base);
            }
        }
        base += len;
    }
    assert!(
        kinks * 100 < theta.len(),
        "{kinks} differences crossed a kink"
    );
    for (n, (err, i)) in names.iter().zip(worst) {
        eprintln!("{n}: largest |GPU - finite difference| {err:.2e} at {i}");
    }
    eprintln!(
        "{kinks} of {} parameters skipped (ReLU kink within ±{H})",
        theta.len()
    );

    // Deterministic (no atomics): the same batch gives bit-identical gradients, and the
    // arena's padding is never written.
    let (acc2, g2) = gpu_batch(&ctx, &arena, &model);
    assert_eq!((acc2.loss_sum, acc2.correct), (acc.loss_sum, acc.correct));
    assert!(g2 == g, "gradients differ between two runs of one batch");
    let image = arena.read_grads_image().unwrap();
    let mut used = vec![false; image.len()];
    for t in arena.layout().tensors() {
        used[t.offset..t.offset + t.len].fill(true);
    }
    assert!(image.iter().zip(&used).all(|(&v, &u)| u || v == 0.0));
}

/// Mean test loss and accuracy of the model's current parameters (GPU eval path).
fn eval(ctx: &GpuContext, model: &Mlp) -> mlp::Acc {
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    model.encode_reset(&mut enc);
    model.encode_eval(&mut enc);
    model.encode_snapshot(&mut enc);
    ctx.queue().submit([enc.finish()]);
    model.read_snapshot().unwrap()[mlp::TEST_SLOT]
}

#[test]
fn a_few_training_steps_reduce_the_loss() {
    let Some(ctx) = crate::common::gpu() else {
        return;
    };
    let data = Dataset::digits().unwrap();
    let (train, test) = mlp::split(&data, 36, 1);
    for (name, lr) in [("adam", 1e-3), ("sgd-momentum", 0.05)] {
        let arena = ParamArena::new(&ctx, &mlp::specs()).unwrap();
        Params::init(3).write(&arena).unwrap();
        let model = Mlp::new(&ctx, &arena, &data, &train, &test, 64).unwrap();
        let config = OptimizerConfig::preset(name).unwrap().with_lr(lr);
        let mut opt = Optimizer::new(&ctx, &arena, config).unwrap();
        let before = eval(&ctx, &model);
        assert_eq!(before.count, 360.0);
        let steps = 30;
        for k in 0..steps {
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            if k == 0 {
                model.encode_reset(&mut enc);
            }
            model.encode_train_batch(&mut enc, k % model.train_batches());
            opt.encode_step(&mut enc, &arena).unwrap();
            model.encode_snapshot(&mut enc);
            ctx.queue().submit([enc.finish()]);
        }
        let trained = model.read_snapshot().unwrap()[mlp::TRAIN_SLOT];
        let rows: usize = (0..steps)
            .map(|k| 64.min(train.len() - (k % model.train_batches()) * 64))
            .sum();
        assert_eq!(trained.count, rows as f64);
        assert_eq!(opt.step_count("fc1.weight").unwrap(), steps as u64);
        let after = eval(&ctx, &model);
        eprintln!(
            "{name}: test loss {:.4} -> {:.4}, accuracy {:.1}% -> {:.1}% after {steps} steps",
            before.loss(),
            after.loss(),
            100.0 * before.accuracy(),
            100.0 * after.accuracy()
        );
        assert!(
            after.loss() < 0.9 * before.loss(),
            "{name}: test loss {} -> {}",
            before.loss(),
            after.loss()
        );
        assert!(
            after.accuracy() > 0.4,
            "{name}: accuracy {}",
            after.accuracy()
        );
    }
}

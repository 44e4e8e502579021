//! Linear regression with a GPU optimizer: fits `y = X w + b` by mean squared error.
//!
//! Each step reads the parameters back, computes the loss and its gradient on the host
//! (`dL/dw = X^T r / n`, `dL/db = mean(r)` with residuals `r = X w + b - y`), uploads the
//! gradient and runs one Adam step on the GPU. It prints the loss as it goes, then the fitted
//! and true coefficients, and fails unless the fit converged to the noise level.
//!
//! Run: `cargo run --release --example linear_regression` (headless; lavapipe works).

use anyhow::{ensure, Context, Result};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{AdamConfig, GpuContext, Optimizer, ParamArena, TensorSpec};

const SAMPLES: usize = 512;
const FEATURES: usize = 8;
const STEPS: usize = 600;
const NOISE: f32 = 0.01;

/// Mean squared error / 2, and its gradient with respect to w and b.
fn loss_and_grad(x: &[f32], y: &[f32], w: &[f32], b: f32) -> (f64, Vec<f32>, f32) {
    let mut gw = [0f64; FEATURES];
    let mut gb = 0f64;
    let mut loss = 0f64;
    for (row, &yi) in x.chunks(FEATURES).zip(y) {
        let pred: f32 = row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + b;
        let r = (pred - yi) as f64;
        loss += 0.5 * r * r;
        for (g, &a) in gw.iter_mut().zip(row) {
            *g += r * a as f64;
        }
        gb += r;
    }
    let n = SAMPLES as f64;
    (
        loss / n,
        gw.iter().map(|g| (g / n) as f32).collect(),
        (gb / n) as f32,
    )
}

fn main() -> Result<()> {
    let ctx = GpuContext::new().context("no GPU adapter (see README: scripts/setup-vulkan.sh)")?;
    println!("adapter: {}", ctx.adapter_info().name);

    // Synthetic data: y = X w_true + b_true + noise.
    let mut rng = fastrand::Rng::with_seed(42);
    let w_true: Vec<f32> = (0..FEATURES).map(|_| rng.f32() * 4.0 - 2.0).collect();
    let b_true = 0.75f32;
    let x: Vec<f32> = (0..SAMPLES * FEATURES)
        .map(|_| rng.f32() * 2.0 - 1.0)
        .collect();
    let y: Vec<f32> = x
        .chunks(FEATURES)
        .map(|row| {
            let clean: f32 = row.iter().zip(&w_true).map(|(a, b)| a * b).sum::<f32>() + b_true;
            clean + (rng.f32() - 0.5) * 2.0 * NOISE
        })
        .collect();

    let arena = ParamArena::new(
        &ctx,
        &[
            TensorSpec::new("weight", FEATURES),
            TensorSpec::new("bias", 1),
        ],
    )?;
    let mut opt = Optimizer::new(
        &ctx,
        &arena,
        AdamConfig {
            lr: 0.05,
            ..Default::default()
        },
    )?;

    let mut loss = f64::NAN;
    for step in 0..=STEPS {
        let w = arena.read_params("weight")?;
        let b = arena.read_params("bias")?[0];
        let (l, gw, gb) = loss_and_grad(&x, &y, &w, b);
        loss = l;
        if step % 100 == 0 {
            println!("step {step:>4}  loss {loss:.3e}");
        }
        if step == STEPS {
            break;
        }
        arena.write_grads("weight", &gw)?;
        arena.write_grads("bias", &[gb])?;
        opt.step(&arena)?;
        // Lower the learning rate for the last third, as a step scheduler would.
        if step == 2 * STEPS / 3 {
            opt.set_lr(0.01)?;
        }
    }

    let w = arena.read_params("weight")?;
    let b = arena.read_params("bias")?[0];
    println!("fitted w: {w:.3?}");
    println!("true   w: {w_true:.3?}");
    println!("fitted b: {b:.3}   true b: {b_true:.3}");
    let max_err = w
        .iter()
        .zip(&w_true)
        .map(|(a, b)| (a - b).abs())
        .fold((b - b_true).abs(), f32::max);
    // With uniform noise of half-width NOISE the best achievable loss is about NOISE^2 / 6.
    let floor = (NOISE as f64).powi(2) / 6.0;
    println!(
        "final loss {loss:.3e} (noise floor ~{floor:.1e}), max coefficient error {max_err:.4}"
    );
    ensure!(
        loss < 10.0 * floor && max_err < 0.01,
        "did not converge: loss {loss:.3e}, max coefficient error {max_err}"
    );
    println!("converged");
    Ok(())
}

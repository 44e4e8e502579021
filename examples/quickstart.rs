//! Quickstart: AdamW over a small multi-tensor model in one arena, one dispatch per step.
//!
//! The "model" is four tensors (two weight matrices and two biases, the biases in a parameter
//! group without weight decay). The loss pulls every parameter towards a fixed target,
//! `L = 0.5 * sum((p - target)^2)`, so the gradient `p - target` is computed on the host from
//! the parameters read back each step and uploaded. A real training loop would write the
//! gradients into `arena.grads_buffer()` from its own backward kernels instead.
//!
//! Run: `cargo run --release --example quickstart` (headless; lavapipe works).

use anyhow::{Context, Result};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{AdamConfig, GpuContext, Optimizer, ParamArena, TensorSpec};

fn main() -> Result<()> {
    let ctx = GpuContext::new().context("no GPU adapter (see README: scripts/setup-vulkan.sh)")?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );

    let specs = [
        TensorSpec::new("fc1.weight", 64 * 32),
        TensorSpec::new("fc1.bias", 64).in_group(1),
        TensorSpec::new("fc2.weight", 10 * 64),
        TensorSpec::new("fc2.bias", 10).in_group(1),
    ];
    let arena = ParamArena::new(&ctx, &specs)?;

    // Deterministic initial parameters and targets.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut targets = Vec::new();
    for s in &specs {
        let init: Vec<f32> = (0..s.len).map(|_| (rng.f32() - 0.5) * 0.2).collect();
        arena.write_params(&s.name, &init)?;
        targets.push((0..s.len).map(|_| rng.f32() - 0.5).collect::<Vec<f32>>());
    }

    let adamw = AdamConfig {
        lr: 0.02,
        ..AdamConfig::adamw()
    };
    let mut opt = Optimizer::new(&ctx, &arena, adamw.clone())?;
    // Group 1 (the biases): no weight decay, as is usual for biases and norm layers.
    opt.set_group_config(
        1,
        AdamConfig {
            weight_decay: 0.0,
            ..adamw
        },
    )?;

    let mut first_loss = None;
    let mut loss = 0.0;
    for step in 0..=200 {
        let params = arena.read_all_params()?;
        loss = 0.0;
        let grads: Vec<Vec<f32>> = params
            .iter()
            .zip(&targets)
            .map(|(p, t)| {
                p.iter()
                    .zip(t)
                    .map(|(&p, &t)| {
                        loss += 0.5 * ((p - t) as f64).powi(2);
                        p - t
                    })
                    .collect()
            })
            .collect();
        first_loss.get_or_insert(loss);
        if step % 40 == 0 {
            println!("step {step:>3}  loss {loss:.6}");
        }
        if step == 200 {
            break;
        }
        arena.write_all_grads(&grads)?;
        opt.step(&arena)?;
    }

    let bias = arena.read_params("fc2.bias")?;
    let m = opt.read_state("exp_avg", "fc2.bias")?;
    println!("fc2.bias after 200 steps:  {:?}", &bias[..4]);
    println!("fc2.bias target:           {:?}", &targets[3][..4]);
    println!("fc2.bias exp_avg:          {:?}", &m[..4]);
    println!("steps taken by fc2.bias: {}", opt.step_count("fc2.bias")?);
    let first = first_loss.unwrap_or(loss);
    println!("loss {first:.4} -> {loss:.6}");
    anyhow::ensure!(loss < first * 0.05, "the loss did not go down enough");
    Ok(())
}

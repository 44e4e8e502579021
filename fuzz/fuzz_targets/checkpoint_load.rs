//! Any bytes through the checkpoint loader: parsing, the param groups, and a load into CPU
//! optimizers of the shapes the seed corpus uses. Nothing may panic, abort or hang; every
//! rejection must be a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpu_optim::{AdamConfig, Checkpoint, CpuOptimizer, ParamGroups, SgdConfig, TensorSpec};

fn model_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::shaped("fc1.weight", &[16, 8]),
        TensorSpec::new("fc1.bias", 16),
        TensorSpec::new("norm.weight", 16),
        TensorSpec::shaped("fc2.weight", &[4, 16]),
        TensorSpec::new("fc2.bias", 4),
    ]
}

fn flat_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("a", 1),
        TensorSpec::new("b.weight", 257),
        TensorSpec::shaped("c.weight", &[17, 241]),
        TensorSpec::shaped("d", &[3, 11]),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(ck) = Checkpoint::from_bytes(data) else {
        return;
    };
    for specs in [model_specs(), flat_specs()] {
        // As the file asks (its own groups), and into fixed optimizers of two kinds.
        if let Ok(groups) = ParamGroups::from_checkpoint(&ck) {
            if let Ok(mut opt) = CpuOptimizer::with_groups(&specs, groups) {
                let mut params = Vec::new();
                let _ = opt.load_checkpoint(&ck, Some(&mut params));
                let _ = opt.load_checkpoint(&ck, None);
            }
        }
        for mut opt in [
            CpuOptimizer::new(AdamConfig::default(), &specs),
            CpuOptimizer::new(SgdConfig { momentum: 0.9, ..SgdConfig::default() }, &specs),
        ]
        .into_iter()
        .flatten()
        {
            let _ = opt.load_checkpoint(&ck, None);
        }
    }
    let _ = ck.to_bytes();
});

//! The CPU reference against golden results from PyTorch 2.15 `torch.optim` (CPU, float32,
//! foreach=False): 25 random cases over SGD, Adam, AdamW, RMSprop and Adagrad, 7 steps each,
//! with tensors frozen (grad = None) on some steps and 0- and 1-length tensors.
//!
//! Tolerance: PyTorch's own fp32 `assert_close` defaults (atol 1e-5, rtol 1.3e-6). The fixture
//! generator is described in tests/fixtures/README.md; the file header names the torch build.

use crate::common::{assert_close, f32s, fixtures, ATOL, RTOL};
use wgpu_optim::CpuOptimizer;
use wgpu_optim::ParamGroupTable;

#[test]
fn cpu_reference_matches_pytorch_fixtures() {
    let cases = fixtures();
    assert_eq!(cases.len(), 25);
    for (ci, case) in cases.iter().enumerate() {
        let cfg = case.config();
        let mut opt = CpuOptimizer::new(cfg, &case.specs()).unwrap();
        let mut params: Vec<Vec<f32>> = case.init.iter().map(|v| f32s(v)).collect();
        for k in 0..case.steps {
            for (i, &fz) in case.frozen[k].iter().enumerate() {
                opt.set_frozen(&format!("t{i}"), fz).unwrap();
            }
            opt.step(&mut params, &case.grads_at(k)).unwrap();
        }
        let what = format!("case {ci} ({} {:?})", case.optimizer, case.hyper);
        for (i, want) in case.expected.params.iter().enumerate() {
            assert_close(
                &format!("{what} param {i}"),
                &params[i],
                &f32s(want),
                ATOL,
                RTOL,
            );
        }
        for (key, want) in &case.expected.state {
            let (i, name) = key.split_once('.').unwrap();
            let got = opt.read_state(name, &format!("t{i}")).unwrap();
            assert_close(
                &format!("{what} state {key}"),
                &got,
                &f32s(want),
                ATOL,
                RTOL,
            );
        }
        // Every state buffer PyTorch keeps we keep too, and no more.
        let mut names: Vec<&str> = case
            .expected
            .state
            .keys()
            .map(|k| k.split_once('.').unwrap().1)
            .collect();
        names.sort();
        names.dedup();
        let mut ours = opt.state_names();
        ours.sort();
        assert_eq!(ours, names, "{what}: state names");
        for (i, &want) in &case.expected.step {
            assert_eq!(
                opt.step_count(&format!("t{i}")).unwrap(),
                want as u64,
                "{what}: step of tensor {i}"
            );
        }
    }
}

// asgd.wgsl: fused ASGD step (weight decay, maximize). Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 AsgdHyper per parameter group, 3 AsgdTensor table, 7 ax (rw).
// Mirrors src/optim/asgd.rs (Rule::update), in torch.optim.ASGD's order (foreach=False):
//   g = maximize ? -grad : grad;  g += wd * p
//   p = p * (1 - lambd * eta);  p = p + (-eta) * g          (two roundings, as torch)
//   ax = copy ? p : ax + (p - ax) * mu
// eta and mu are per-tensor host scalars (f64, from the previous step); the host forms
// 1 - lambd * eta, -eta, mu and the copy flag (mu == 1) per tensor. While mu == 1, ax is only
// written, not read.

struct AsgdHyper {
    flags: u32,
    weight_decay: f32,
    pad0: u32,
    pad1: u32,
}

struct AsgdTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    decay_factor: f32,
    neg_eta: f32,
    mu: f32,
    // 1: ax = p (mu == 1)
    copy: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AsgdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AsgdTensor>;
@group(0) @binding(7) var<storage, read_write> ax: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: AsgdTensor, hp: AsgdHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (hp.weight_decay != 0.0) {
        g = g + hp.weight_decay * p0;
    }
    let decayed = p0 * t.decay_factor;
    let p = decayed + t.neg_eta * g;
    store_param(i, select(p0, p, mask));
    if (t.copy != 0u) {
        // Padding lanes of p are zero (their grads and params are), so ax's stay zero.
        ax[si] = select(vec4<f32>(0.0), p, mask);
    } else {
        let a0 = ax[si];
        ax[si] = select(a0, a0 + (p - a0) * t.mu, mask);
    }
}

@compute @workgroup_size(WG_SIZE)
fn asgd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

// adamax.wgsl: fused Adamax step. Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 AdamaxHyper per parameter group, 3 AdamaxTensor table, 7 exp_avg, 8 exp_inf.
// Mirrors src/optim/adamax.rs::update, in torch.optim.Adamax's order (foreach=False):
//   g = maximize ? -grad : grad;  g += wd * p
//   m = lerp(m, g, 1 - beta1);  u = max(u * beta2, |g| + eps)     # eps inside the max
//   p += (-lr / bc1) * m / u
// The bias correction comes per tensor from the host (f64, then f32), because frozen tensors
// keep their own step counts.

struct AdamaxHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct AdamaxTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // -lr / (1 - beta1^t)
    neg_clr: f32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdamaxHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdamaxTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_inf: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: AdamaxTensor, hp: AdamaxHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (hp.weight_decay != 0.0) {
        g = g + hp.weight_decay * p0;
    }
    let m0 = exp_avg[si];
    let u0 = exp_inf[si];
    let m = lerp_torch(m0, g, hp.one_minus_beta1);
    // torch.maximum propagates NaN; WGSL's max need not.
    let u = max_nan4(u0 * hp.beta2, abs(g) + hp.eps);
    exp_avg[si] = select(m0, m, mask);
    exp_inf[si] = select(u0, u, mask);
    store_param(i, select(p0, p0 + (t.neg_clr * m) / u, mask));
}

@compute @workgroup_size(WG_SIZE)
fn adamax_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

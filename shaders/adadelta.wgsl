// adadelta.wgsl: fused Adadelta step (weight decay, maximize). Requires common.wgsl and
// elementwise.wgsl.
// Bindings: 0 AdadeltaHyper per parameter group, 3 AdadeltaTensor table, 7 square_avg,
// 8 acc_delta (rw). Mirrors src/optim/adadelta.rs (Rule::update), in torch.optim.Adadelta's
// order (foreach=False):
//   g = maximize ? -grad : grad;  g += wd * p
//   s = s * rho + ((1 - rho) * g) * g
//   delta = sqrt(a + eps) / sqrt(s + eps) * g        (eps INSIDE both square roots)
//   a = a * rho + ((1 - rho) * delta) * delta
//   p += -lr * delta
// Nothing depends on the step count: every scalar is per group.

struct AdadeltaHyper {
    flags: u32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    neg_lr: f32,
    weight_decay: f32,
    pad0: u32,
    pad1: u32,
}

struct AdadeltaTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdadeltaHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdadeltaTensor>;
@group(0) @binding(7) var<storage, read_write> square_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> acc_delta: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused, and every scalar is per
// group, so is `t`).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: AdadeltaTensor, hp: AdadeltaHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (hp.weight_decay != 0.0) {
        g = g + hp.weight_decay * p0;
    }
    let s0 = square_avg[si];
    let a0 = acc_delta[si];
    let s = s0 * hp.rho + (hp.one_minus_rho * g) * g;
    let root_s = sqrt(s + hp.eps);
    let delta = sqrt(a0 + hp.eps) / root_s * g;
    let a = a0 * hp.rho + (hp.one_minus_rho * delta) * delta;
    square_avg[si] = select(s0, s, mask);
    acc_delta[si] = select(a0, a, mask);
    store_param(i, select(p0, p0 + hp.neg_lr * delta, mask));
}

@compute @workgroup_size(WG_SIZE)
fn adadelta_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

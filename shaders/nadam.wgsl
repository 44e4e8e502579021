// nadam.wgsl: fused NAdam / NAdamW step. Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 NadamHyper per parameter group, 3 NadamTensor table, 7 exp_avg, 8 exp_avg_sq.
// Mirrors src/optim/nadam.rs::update, in torch.optim.NAdam's order (foreach=False):
//   g = maximize ? -grad : grad
//   decoupled ? p *= 1 - lr*wd : g += wd * p
//   m = lerp(m, g, 1 - beta1);  v = beta2 * v + ((1 - beta2) * g) * g
//   denom = sqrt(v / bc2) + eps
//   p += (grad_coef * g) / denom;  p += (exp_avg_coef * m) / denom     (two roundings of p)
// The momentum schedule, mu_product and both coefficients come per tensor from the host (f64,
// then f32), because frozen tensors keep their own step counts and products.

const NADAM_DECOUPLED: u32 = 256u;

struct NadamHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    // 1 - lr * weight_decay, for decoupled (NAdamW) decay
    decay_factor: f32,
    pad0: u32,
}

struct NadamTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // 1 - beta2^t
    bias_correction2: f32,
    // -lr * (1 - mu_t) / (1 - mu_product)
    grad_coef: f32,
    // -lr * mu_{t+1} / (1 - mu_product * mu_{t+1})
    exp_avg_coef: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<NadamHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<NadamTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: NadamTensor, hp: NadamHyper) {
    let p0 = params[i];
    var p = p0;
    var g = load_grad(i, hp.flags);
    if (hp.weight_decay != 0.0) {
        if ((hp.flags & NADAM_DECOUPLED) != 0u) {
            p = p * hp.decay_factor;
        } else {
            g = g + hp.weight_decay * p;
        }
    }
    let m0 = exp_avg[si];
    let v0 = exp_avg_sq[si];
    let m = lerp_torch(m0, g, hp.one_minus_beta1);
    let v = v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g;
    exp_avg[si] = select(m0, m, mask);
    exp_avg_sq[si] = select(v0, v, mask);
    let denom = sqrt(v / t.bias_correction2) + hp.eps;
    p = p + (t.grad_coef * g) / denom;
    p = p + (t.exp_avg_coef * m) / denom;
    store_param(i, select(p0, p, mask));
}

@compute @workgroup_size(WG_SIZE)
fn nadam_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

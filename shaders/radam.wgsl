// radam.wgsl: fused RAdam / RAdamW step. Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 RadamHyper per parameter group, 3 RadamTensor table, 7 exp_avg, 8 exp_avg_sq.
// Mirrors src/optim/radam.rs::update, in torch.optim.RAdam's order (foreach=False):
//   g = maximize ? -grad : grad
//   decoupled ? p *= 1 - lr*wd : g += wd * p
//   m = lerp(m, g, 1 - beta1);  v = beta2 * v + ((1 - beta2) * g) * g
//   rectified: p -= (((m / bc1) * lr) * ((1 / (sqrt(v) + eps)) * sqrt(bc2))) * r   # eps on raw sqrt(v)
//   else:      p -= (m / bc1) * lr
// The switch (rho_t > 5), bias corrections and r come per tensor from the host (f64, then f32),
// because frozen tensors keep their own step counts.

const RADAM_DECOUPLED: u32 = 256u;

struct RadamHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    lr: f32,
    weight_decay: f32,
    // 1 - lr * weight_decay, for decoupled (RAdamW) decay
    decay_factor: f32,
}

struct RadamTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // 1 when rho_t > 5
    rectified: u32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    rect: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<RadamHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<RadamTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: RadamTensor, hp: RadamHyper) {
    let p0 = params[i];
    var p = p0;
    var g = load_grad(i, hp.flags);
    if (hp.weight_decay != 0.0) {
        if ((hp.flags & RADAM_DECOUPLED) != 0u) {
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
    let step = (m / t.bias_correction1) * hp.lr;
    if (t.rectified != 0u) {
        let adaptive = (vec4<f32>(1.0) / (sqrt(v) + hp.eps)) * t.bias_correction2_sqrt;
        p = p - (step * adaptive) * t.rect;
    } else {
        p = p - step;
    }
    store_param(i, select(p0, p, mask));
}

@compute @workgroup_size(WG_SIZE)
fn radam_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

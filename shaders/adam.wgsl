// adam.wgsl: fused Adam / AdamW / AMSGrad step. Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 AdamHyper per parameter group, 3 AdamTensor table, 7 exp_avg, 8 exp_avg_sq, 9 max_exp_avg_sq (rw; a
// dummy unless amsgrad). Mirrors src/optim/adam.rs::adam_update, in torch.optim.Adam's order
// (foreach=False):
//   g = maximize ? -grad : grad
//   decoupled ? p *= 1 - lr*wd : g += wd * p
//   m = lerp(m, g, 1 - beta1);  v = beta2 * v + ((1 - beta2) * g) * g;  vmax = max(vmax, v)
//   p += (-lr / bc1) * m / (sqrt(v or vmax) / sqrt(bc2) + eps)
// Bias corrections come per tensor from the host (f64, then f32), because frozen tensors keep
// their own step counts.

const ADAM_AMSGRAD: u32 = 256u;
const ADAM_DECOUPLED: u32 = 512u;

struct AdamHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct AdamTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    neg_step_size: f32,
    bias_correction2_sqrt: f32,
    weight_decay: f32,
    // 1 - lr * weight_decay, for decoupled (AdamW) decay
    decay_factor: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdamHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdamTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: AdamTensor, hp: AdamHyper) {
    let p0 = params[i];
    var p = p0;
    var g = load_grad(i, hp.flags);
    if (t.weight_decay != 0.0) {
        if ((hp.flags & ADAM_DECOUPLED) != 0u) {
            p = p * t.decay_factor;
        } else {
            g = g + t.weight_decay * p;
        }
    }
    let m0 = exp_avg[si];
    let v0 = exp_avg_sq[si];
    let m = lerp_torch(m0, g, hp.one_minus_beta1);
    let v = v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g;
    exp_avg[si] = select(m0, m, mask);
    exp_avg_sq[si] = select(v0, v, mask);
    var vv = v;
    if ((hp.flags & ADAM_AMSGRAD) != 0u) {
        let x0 = max_exp_avg_sq[si];
        vv = max(x0, v);
        max_exp_avg_sq[si] = select(x0, vv, mask);
    }
    let denom = sqrt(vv) / t.bias_correction2_sqrt + hp.eps;
    store_param(i, select(p0, p + (t.neg_step_size * m) / denom, mask));
}

@compute @workgroup_size(WG_SIZE)
fn adam_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

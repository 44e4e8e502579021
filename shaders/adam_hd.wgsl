// adam_hd.wgsl: Adam-HD, Adam whose lr is learned by hypergradient descent (Baydin et al.,
// ICLR 2018), three dispatches per step whatever the tensor count, no host round trip.
// Requires common.wgsl, reduce.wgsl and hd.wgsl (the dot and lr passes, HD_GLOBAL, HD_RESET,
// with_decay). Mirrors src/optim/adam_hd.rs (update_learned) and src/optim/hd.rs.
// Bindings: 0 AdamHdHyper per parameter group, 3 AdamHdTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 exp_avg, 8 exp_avg_sq, 9 prev_direction, 10 partials (chunk dots,
// unused per-tensor entries, then each group's (lr, h, 0, 0)).
//   adam_hd_dot   per chunk: hd.wgsl's hd_dot, partial sums of <g, d_prev>
//   adam_hd_lr    per group: hd.wgsl's hd_lr, the fold and the learned lr
//   adam_hd_step  per chunk: m, v as torch 1.x Adam; d = step_scale * m / (sqrt(v) + eps)
//                 (step_scale = sqrt(1 - beta2^t) / (1 - beta1^t), host f64); p -= lr * d;
//                 d_prev = d


struct AdamHdHyper {
    flags: u32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    lr: f32,
    hypergrad_lr: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct AdamHdTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    step_scale: f32,
    pad0: u32,
}

// hd.wgsl's hd_dot folds with the group's hyperparameters.
alias ChunkArgs = AdamHdHyper;

@group(0) @binding(0) var<uniform> hypers: array<AdamHdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdamHdTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> prev_direction: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn adam_hd_dot(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    hd_dot(wid, nwg, lid);
}

@compute @workgroup_size(RED_WG)
fn adam_hd_lr(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    hd_lr(wid, nwg, lid);
}

@compute @workgroup_size(WG_SIZE)
fn adam_hd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    let alpha = partials[learned_slot(c.group)].x;
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let si = c.sbase + v;
        let mask = lane_mask(c.len, v);
        let p0 = params[i];
        let g = with_decay(load_grad(i, hp.flags), p0, hp.weight_decay);
        let m0 = exp_avg[si];
        let v0 = exp_avg_sq[si];
        let m = m0 * hp.beta1 + hp.one_minus_beta1 * g;
        let s = v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g;
        let d = t.step_scale * (m / (sqrt(s) + hp.eps));
        exp_avg[si] = select(m0, m, mask);
        exp_avg_sq[si] = select(v0, s, mask);
        // State padding is zero and stays zero.
        prev_direction[si] = select(vec4<f32>(0.0), d, mask);
        store_param(i, select(p0, p0 - alpha * d, mask));
    }
}

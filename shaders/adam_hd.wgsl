// adam_hd.wgsl: Adam-HD, Adam whose lr is learned by hypergradient descent (Baydin et al.,
// ICLR 2018), three dispatches per step whatever the tensor count, no host round trip.
// Requires common.wgsl and reduce.wgsl. Mirrors src/optim/adam_hd.rs (Rule::chunk_partials,
// group_update and update_learned).
// Bindings: 0 AdamHdHyper per parameter group, 3 AdamHdTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 exp_avg, 8 exp_avg_sq, 9 prev_direction, 10 partials (chunk dots,
// unused per-tensor entries, then each group's (lr, h, 0, 0)).
//   adam_hd_dot   per chunk: partial sums of <g, d_prev>, g = grad + wd * p (0 for frozen tensors)
//   adam_hd_lr    per group: h folded in a fixed order (HD_GLOBAL: over the segment);
//                 lr = (HD_RESET ? configured lr : learned lr) + hypergrad_lr * h
//   adam_hd_step  per chunk: m, v as torch 1.x Adam; d = step_scale * m / (sqrt(v) + eps)
//                 (step_scale = sqrt(1 - beta2^t) / (1 - beta1^t), host f64); p -= lr * d;
//                 d_prev = d

const HD_GLOBAL: u32 = 1024u;
const HD_RESET: u32 = 2048u;

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

@group(0) @binding(0) var<uniform> hypers: array<AdamHdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdamHdTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> prev_direction: array<vec4<f32>>;

// L2 decay added to the gradient (coupled, as torch 1.x Adam in the reference code).
fn with_decay(g: vec4<f32>, p: vec4<f32>, wd: f32) -> vec4<f32> {
    if (wd != 0.0) {
        return g + wd * p;
    }
    return g;
}

@compute @workgroup_size(WG_SIZE)
fn adam_hd_dot(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let chunk = win.chunk_base + group_index(wid, nwg);
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        // A frozen tensor contributes nothing to the hypergradient.
        if (lid == 0u) {
            partials[chunk] = vec4<f32>(0.0);
        }
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let g = with_decay(load_grad(i, hp.flags), params[i], hp.weight_decay);
        let dot = lane_dot(g, prev_direction[c.sbase + v], lane_mask(c.len, v));
        acc = red_combine(acc, vec4<f32>(dot, 0.0, 0.0, 0.0));
    }
    store_chunk_partial(chunk, lid, acc);
}

@compute @workgroup_size(RED_SIZE)
fn adam_hd_lr(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let gi = group_index(wid, nwg);
    let hp = hypers[gi];
    let h = fold_group_chunks(gi, (hp.flags & HD_GLOBAL) != 0u, lid).x;
    if (lid == 0u) {
        let slot = learned_slot(gi);
        var alpha = partials[slot].x;
        if ((hp.flags & HD_RESET) != 0u) {
            alpha = hp.lr;
        }
        partials[slot] = vec4<f32>(alpha + hp.hypergrad_lr * h, h, 0.0, 0.0);
    }
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

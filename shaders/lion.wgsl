// lion.wgsl: Lion (Chen et al. 2023) as timm.optim.Lion, three dispatches per step whatever the
// tensor count. Requires common.wgsl and reduce.wgsl.
// Bindings: 0 LionHyper per parameter group, 3 LionTensor table, 4 aux (gradient scale), 5 params,
// 6 grads, 7 exp_avg, 10 partials (chunk partials (count, elements, 0, 0), then per tensor
// (caution scale, mean, 0, 0)). Mirrors src/optim/lion.rs (LionConfig::update).
//   lion_caution_count  per chunk:  caution groups only: count of u * g > 0 with
//                                   u = sign(lerp(m, g, 1 - beta1))
//   lion_caution_scale  per tensor: caution groups only: the count summed in u32 (exact),
//                                   scale = 1 / max(count / numel, 1e-3)
//   lion_step           per chunk:  p = p * (1 - lr*wd); u = sign(lerp(m, g, 1 - beta1));
//                                   caution: u = u * (u*g > 0 ? scale : 0);
//                                   p = p + (-lr) * u;  m = lerp(m, g, 1 - beta2)
// The sign is taken of torch.lerp's exact f32 result (lerp_torch): a different rounding near 0
// would flip it. Both chunk passes compute u from the same m and g with the same operations, so
// the count and the update agree bit for bit.

const LION_CAUTION: u32 = 256u;

struct LionHyper {
    flags: u32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    neg_lr: f32,
    // 1 - lr * weight_decay
    decay_factor: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct LionTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first_chunk: u32,
    chunk_count: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<LionHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<LionTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;

// torch's sign: 1, -1, or 0 for zeros and NaN.
fn sign_torch(x: vec4<f32>) -> vec4<f32> {
    let one = vec4<f32>(1.0);
    let zero = vec4<f32>(0.0);
    return select(zero, one, x > zero) - select(zero, one, x < zero);
}

fn lion_direction(m: vec4<f32>, g: vec4<f32>, hp: LionHyper) -> vec4<f32> {
    return sign_torch(lerp_torch(m, g, hp.one_minus_beta1));
}

// lion_caution_count's virtual lanes (reduce.wgsl's fold_chunk_lanes): counts (at most 4096 in
// f32: exact), with the group's hyperparameters.
alias ChunkArgs = LionHyper;
alias LaneAcc = f32;

// n plus the count of vec4 v's lanes whose update agrees in sign with the gradient.
fn reduce_vec(n: LaneAcc, hp: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let g = load_grad(c.base + v, hp.flags);
    let u = lion_direction(exp_avg[c.sbase + v], g, hp);
    return n + count_lanes(u * g > vec4<f32>(0.0), lane_mask(c.len, v));
}

fn set_lane(l: u32, n: LaneAcc) {
    set_lane_count(l, n);
}

@compute @workgroup_size(WG_SIZE)
fn lion_caution_count(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let t = tensors[c.tensor];
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    if (t.live == 0u || (hp.flags & LION_CAUTION) == 0u) {
        return;
    }
    fold_chunk_lanes(c, hp, lid);
    store_chunk_count(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn lion_caution_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ti = group_index(wid, nwg);
    if (ti >= win.n_tensors) {
        return;
    }
    let t = tensors[ti];
    if (t.live == 0u) {
        return;
    }
    let hp = hypers[t.group];
    if ((hp.flags & LION_CAUTION) == 0u) {
        return;
    }
    store_caution_scale(ti, t.first_chunk, t.chunk_count, lid);
}

@compute @workgroup_size(WG_SIZE)
fn lion_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    // Idle invocations (past the end of a short chunk) leave before the tensor-table load.
    if (!c.ok || lid * 4u >= c.len) {
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    let caution = (hp.flags & LION_CAUTION) != 0u;
    var scale = 0.0;
    if (caution) {
        scale = partials[win.tensor_base + c.tensor].x;
    }
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let si = c.sbase + v;
        let mask = lane_mask(c.len, v);
        let p0 = params[i];
        let g = load_grad(i, hp.flags);
        let m0 = exp_avg[si];
        let p = p0 * hp.decay_factor;
        var u = lion_direction(m0, g, hp);
        if (caution) {
            u = u * select(vec4<f32>(0.0), vec4<f32>(scale), u * g > vec4<f32>(0.0));
        }
        store_param(i, select(p0, p + hp.neg_lr * u, mask));
        exp_avg[si] = select(m0, lerp_torch(m0, g, hp.one_minus_beta2), mask);
    }
}

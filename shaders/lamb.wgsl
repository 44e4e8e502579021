// lamb.wgsl: LAMB (You et al. 2020) in timm's formulation, three dispatches per step whatever
// the tensor count. Requires common.wgsl and reduce.wgsl.
// Bindings: 0 LambHyper per parameter group, 3 LambTensor table, 4 aux (gradient scale), 5 params, 6 grads,
// 7 exp_avg, 8 exp_avg_sq, 10 partials (chunk partials, then per tensor (ratio, |p|, |u|, 0)).
// Mirrors src/optim/lamb.rs (which takes the norms in f64).
//   lamb_moments per chunk:  m = beta1*m + (1-beta1)*g;  v = beta2*v + ((1-beta2)*g)*g;
//                            partial sums of p^2 and u^2 with
//                            u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd*p
//   lamb_ratio   per tensor: ratio = |p| / |u| (1 if either is 0); trust_clip: min(ratio, 1)
//   lamb_apply   per chunk:  p += -lr * (u * ratio), with u recomputed from the stored m, v, p
// Recomputing u (bit-identical: same inputs, same operations) instead of storing it costs the
// same bytes (read m, v instead of writing and reading u) and needs no scratch buffer.
// A tensor adapts when its group's weight_decay != 0 or always_adapt (timm).

const LAMB_TRUST_CLIP: u32 = 256u;

struct LambHyper {
    flags: u32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    pad0: u32,
    pad1: u32,
}

struct LambTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first_chunk: u32,
    chunk_count: u32,
    adapt: u32,
    neg_lr: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<LambHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<LambTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

fn lamb_direction(m: vec4<f32>, v: vec4<f32>, p: vec4<f32>, t: LambTensor, hp: LambHyper) -> vec4<f32> {
    let denom = sqrt(v) / t.bias_correction2_sqrt + hp.eps;
    var u = (m / t.bias_correction1) / denom;
    if (t.weight_decay != 0.0) {
        u = u + t.weight_decay * p;
    }
    return u;
}

// lamb_moments' virtual lanes (reduce.wgsl's fold_chunk_lanes): sums, with the tensor's row
// and its group's hyperparameters.
struct ChunkArgs {
    t: LambTensor,
    hp: LambHyper,
}

alias LaneAcc = vec4<f32>;

// Updates the moments of vec4 v; sums of squares only (lamb_ratio reads x and z): the same
// sums as red_combine's.
fn reduce_vec(acc: LaneAcc, a: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let hp = a.hp;
    let i = c.base + v;
    let mask = lane_mask(c.len, v);
    let p = params[i];
    let g = load_grad(i, hp.flags);
    let si = c.sbase + v;
    let m0 = exp_avg[si];
    let v0 = exp_avg_sq[si];
    let m = m0 * hp.beta1 + hp.one_minus_beta1 * g;
    let s = v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g;
    exp_avg[si] = select(m0, m, mask);
    exp_avg_sq[si] = select(v0, s, mask);
    let u = lamb_direction(m, s, p, a.t, hp);
    return acc + vec4<f32>(lane_sumsq(p, mask), 0.0, lane_sumsq(u, mask), 0.0);
}

fn set_lane(l: u32, acc: LaneAcc) {
    set_lane_partial(l, acc);
}

@compute @workgroup_size(WG_SIZE)
fn lamb_moments(
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
    fold_chunk_lanes(c, ChunkArgs(t, hypers[c.group]), lid);
    store_chunk_partial(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn lamb_ratio(
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
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[t.group];
    let v = fold_chunks(t.first_chunk, t.chunk_count, lid);
    if (lid == 0u) {
        let w = sqrt(v.x);
        let u = sqrt(v.z);
        var ratio = 1.0;
        if (t.adapt != 0u && w > 0.0 && u > 0.0) {
            ratio = w / u;
        }
        if (t.adapt != 0u && (hp.flags & LAMB_TRUST_CLIP) != 0u) {
            ratio = min(ratio, 1.0);
        }
        partials[win.tensor_base + ti] = vec4<f32>(ratio, w, u, 0.0);
    }
}

@compute @workgroup_size(WG_SIZE)
fn lamb_apply(
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
    let ratio = partials[win.tensor_base + c.tensor].x;
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let p0 = params[i];
        let si = c.sbase + v;
        let u = lamb_direction(exp_avg[si], exp_avg_sq[si], p0, t, hp);
        store_param(i, select(p0, p0 + t.neg_lr * (u * ratio), lane_mask(c.len, v)));
    }
}

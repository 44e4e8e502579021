// adopt.wgsl: ADOPT (Taniguchi et al. 2024) as timm.optim.Adopt, three dispatches per step
// whatever the tensor count. Requires common.wgsl, reduce.wgsl and fma.wgsl (fma_exact).
// Bindings: 0 AdoptHyper per parameter group, 3 AdoptTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 exp_avg, 8 exp_avg_sq, 10 partials (chunk partials (count, elements, 0, 0),
// then per tensor (caution scale, mean, 0, 0)). Mirrors src/optim/adopt.rs (AdoptConfig::update).
//   adopt_caution_count  per chunk:  caution groups, from step 2 on: count of m * g > 0 with m
//                                    the new first moment (adopt_moment)
//   adopt_caution_scale  per tensor: the count summed in u32 (exact),
//                                    scale = 1 / max(count / numel, 1e-3)
//   adopt_step           per chunk:  g = maximize ? -grad : grad; L2: g = fma(wd, p, g) (fma_exact)
//                                    first step: v = v + g*g, nothing else
//                                    decoupled: p = p + (-lr*wd) * p
//                                    n = g / max(sqrt(v), eps); clip: clamp(n, -c, c)
//                                    m = lerp(m, n, 1 - beta1)
//                                    p = p + (-lr) * (caution ? m * (m*g > 0 ? scale : 0) : m)
//                                    v = beta2 * v + ((1 - beta2) * g) * g
// Both chunk passes compute m from the same p, g, m, v with the same operations, so the count
// and the update agree bit for bit.

const ADOPT_CAUTION: u32 = 256u;
const ADOPT_DECOUPLED: u32 = 512u;
const ADOPT_CLIP: u32 = 1024u;

struct AdoptHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    neg_lr: f32,
    // -(lr * weight_decay), for decoupled decay
    neg_lr_wd: f32,
}

struct AdoptTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first_chunk: u32,
    chunk_count: u32,
    // 1 on the tensor's first step
    first: u32,
    // (t - 1)^clip_exp
    clip: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdoptHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdoptTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

fn adopt_l2(hp: AdoptHyper) -> bool {
    return hp.weight_decay != 0.0 && (hp.flags & ADOPT_DECOUPLED) == 0u;
}

// The gradient the rule sees: maximize (and clipping) in load_grad, then L2 decay.
fn adopt_grad(i: u32, p: vec4<f32>, hp: AdoptHyper) -> vec4<f32> {
    var g = load_grad(i, hp.flags);
    if (adopt_l2(hp)) {
        let wd = hp.weight_decay;
        g = vec4<f32>(fma_exact(wd, p.x, g.x), fma_exact(wd, p.y, g.y), fma_exact(wd, p.z, g.z), fma_exact(wd, p.w, g.w));
    }
    return g;
}

// The new first moment, from step 2 on.
fn adopt_moment(g: vec4<f32>, m: vec4<f32>, v: vec4<f32>, t: AdoptTensor, hp: AdoptHyper) -> vec4<f32> {
    let s = sqrt(v);
    let eps = vec4<f32>(hp.eps);
    // torch.clamp(sqrt(v), eps), written as a select so that NaN stays NaN.
    var n = g / select(s, eps, s < eps);
    if ((hp.flags & ADOPT_CLIP) != 0u) {
        let c = vec4<f32>(t.clip);
        n = select(n, -c, n < -c);
        n = select(n, c, n > c);
    }
    return lerp_torch(m, n, hp.one_minus_beta1);
}

// adopt_caution_count's virtual lanes (reduce.wgsl's fold_chunk_lanes): counts (at most 4096
// in f32: exact), with the tensor's row, its group's hyperparameters, and whether the gradient
// takes L2 decay (then it reads p).
struct ChunkArgs {
    t: AdoptTensor,
    hp: AdoptHyper,
    l2: bool,
}

alias LaneAcc = f32;

// n plus the count of vec4 v's lanes whose new first moment agrees in sign with the gradient.
fn reduce_vec(n: LaneAcc, a: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let i = c.base + v;
    let si = c.sbase + v;
    var p = vec4<f32>(0.0);
    if (a.l2) {
        p = params[i];
    }
    let g = adopt_grad(i, p, a.hp);
    let m = adopt_moment(g, exp_avg[si], exp_avg_sq[si], a.t, a.hp);
    return n + count_lanes(m * g > vec4<f32>(0.0), lane_mask(c.len, v));
}

fn set_lane(l: u32, n: LaneAcc) {
    set_lane_count(l, n);
}

@compute @workgroup_size(WG_SIZE)
fn adopt_caution_count(
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
    if (t.live == 0u || t.first != 0u || (hp.flags & ADOPT_CAUTION) == 0u) {
        return;
    }
    fold_chunk_lanes(c, ChunkArgs(t, hp, adopt_l2(hp)), lid);
    store_chunk_count(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn adopt_caution_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ti = group_index(wid, nwg);
    if (ti >= win.n_tensors) {
        return;
    }
    let t = tensors[ti];
    if (t.live == 0u || t.first != 0u) {
        return;
    }
    let hp = hypers[t.group];
    if ((hp.flags & ADOPT_CAUTION) == 0u) {
        return;
    }
    store_caution_scale(ti, t.first_chunk, t.chunk_count, lid);
}

@compute @workgroup_size(WG_SIZE)
fn adopt_step(
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
    let first = t.first != 0u;
    let caution = (hp.flags & ADOPT_CAUTION) != 0u;
    let decay = hp.weight_decay != 0.0 && (hp.flags & ADOPT_DECOUPLED) != 0u;
    var scale = 0.0;
    if (caution && !first) {
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
        let g = adopt_grad(i, p0, hp);
        let v0 = exp_avg_sq[si];
        if (first) {
            // v = g^2 (timm's addcmul_ into the zero state); m and p are left alone.
            exp_avg_sq[si] = select(v0, v0 + g * g, mask);
            continue;
        }
        var p = p0;
        if (decay) {
            p = p + hp.neg_lr_wd * p;
        }
        let m0 = exp_avg[si];
        let m = adopt_moment(g, m0, v0, t, hp);
        exp_avg[si] = select(m0, m, mask);
        var me = m;
        if (caution) {
            me = m * select(vec4<f32>(0.0), vec4<f32>(scale), m * g > vec4<f32>(0.0));
        }
        store_param(i, select(p0, p + hp.neg_lr * me, mask));
        exp_avg_sq[si] = select(v0, v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g, mask);
    }
}

// lars.wgsl: LARS (You, Gitman & Ginsburg 2017) in timm's formulation, three dispatches per step
// whatever the tensor count. Requires common.wgsl and reduce.wgsl.
// Bindings: 0 LarsHyper per parameter group, 3 LarsTensor table, 4 aux (gradient scale), 5 params, 6 grads,
// 7 momentum_buffer (a dummy when momentum == 0), 10 partials (chunk partials, then per tensor
// (ratio, |p|, |g|, 0)). Mirrors src/optim/lars.rs (which takes the norms in f64).
//   lars_norms  per chunk:  partial sums of p^2 and g^2 (g after clipping)
//   lars_ratio  per tensor: ratio = eta*|p| / (|g| + wd*|p| + eps); 1 if |p| or |g| is 0;
//                           LARC clip: ratio = min(ratio / lr, 1)
//   lars_step   per chunk:  adapting tensors: g = (g + wd*p) * ratio; then PyTorch SGD momentum
//                           (first step: buf = g), p += -lr * g
// A tensor adapts when its group's weight_decay != 0 or always_adapt (timm): a group with
// weight_decay 0 (biases, norm layers) gets neither decay nor adaptation.

const LARS_MOMENTUM: u32 = 256u;
const LARS_NESTEROV: u32 = 512u;
const LARS_TRUST_CLIP: u32 = 1024u;

struct LarsHyper {
    flags: u32,
    momentum: f32,
    one_minus_dampening: f32,
    trust_coefficient: f32,
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct LarsTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first: u32,
    first_chunk: u32,
    chunk_count: u32,
    adapt: u32,
    neg_lr: f32,
    lr: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<LarsHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<LarsTensor>;
@group(0) @binding(7) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

// lars_norms' virtual lanes (reduce.wgsl's fold_chunk_lanes): sums, with the group's
// hyperparameters.
alias ChunkArgs = LarsHyper;
alias LaneAcc = vec4<f32>;

// Sums of squares only (lars_ratio reads x and z): the same sums as red_combine's.
fn reduce_vec(acc: LaneAcc, hp: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let mask = lane_mask(c.len, v);
    let i = c.base + v;
    return acc + vec4<f32>(lane_sumsq(params[i], mask), 0.0, lane_sumsq(load_grad(i, hp.flags), mask), 0.0);
}

fn set_lane(l: u32, acc: LaneAcc) {
    set_lane_partial(l, acc);
}

@compute @workgroup_size(WG_SIZE)
fn lars_norms(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u || t.adapt == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    fold_chunk_lanes(c, hypers[c.group], lid);
    store_chunk_partial(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn lars_ratio(
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
    if (t.adapt == 0u) {
        if (lid == 0u) {
            partials[win.tensor_base + ti] = vec4<f32>(1.0, 0.0, 0.0, 0.0);
        }
        return;
    }
    let v = fold_chunks(t.first_chunk, t.chunk_count, lid);
    if (lid == 0u) {
        let w = sqrt(v.x);
        let g = sqrt(v.z);
        var ratio = 1.0;
        if (w > 0.0 && g > 0.0) {
            ratio = hp.trust_coefficient * w / (g + w * t.weight_decay + hp.eps);
        }
        if ((hp.flags & LARS_TRUST_CLIP) != 0u) {
            ratio = min(ratio / t.lr, 1.0);
        }
        partials[win.tensor_base + ti] = vec4<f32>(ratio, w, g, 0.0);
    }
}

@compute @workgroup_size(WG_SIZE)
fn lars_step(
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
    var ratio = 1.0;
    if (t.adapt != 0u) {
        ratio = partials[win.tensor_base + c.tensor].x;
    }
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let mask = lane_mask(c.len, v);
        let p0 = params[i];
        var g = load_grad(i, hp.flags);
        if (t.adapt != 0u) {
            g = (g + t.weight_decay * p0) * ratio;
        }
        if ((hp.flags & LARS_MOMENTUM) != 0u) {
            let si = c.sbase + v;
            let b0 = momentum_buffer[si];
            let m = sgd_momentum(b0, g, t.first != 0u, hp.momentum, hp.one_minus_dampening, (hp.flags & LARS_NESTEROV) != 0u);
            momentum_buffer[si] = select(b0, m.buf, mask);
            g = m.dir;
        }
        store_param(i, select(p0, p0 + t.neg_lr * g, mask));
    }
}

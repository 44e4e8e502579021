// sgd_hd.wgsl: SGD-HD and SGDN-HD, hypergradient descent on the lr (Baydin et al., ICLR 2018),
// three dispatches per step whatever the tensor count, no host round trip. Requires
// common.wgsl and reduce.wgsl. Mirrors src/optim/sgd_hd.rs (Rule::chunk_partials,
// group_update and update_learned).
// Bindings: 0 SgdHdHyper per parameter group, 3 SgdHdTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 momentum_buffer (a dummy when momentum == 0), 8 prev_direction,
// 10 partials (chunk dots, unused per-tensor entries, then each group's (lr, h, 0, 0)).
//   sgd_hd_dot   per chunk: partial sums of <g, d_prev>, g = grad + wd * p (0 for frozen tensors)
//   sgd_hd_lr    per group: h = the group's (HD_GLOBAL: the segment's) dots folded in a fixed
//                order; lr = (HD_RESET ? configured lr : learned lr) + hypergrad_lr * h
//   sgd_hd_step  per chunk: PyTorch SGD momentum on g (first step: buf = g; Nesterov
//                d = g + momentum * buf), p -= lr * d, d_prev = d

const HD_MOMENTUM: u32 = 256u;
const HD_NESTEROV: u32 = 512u;
const HD_GLOBAL: u32 = 1024u;
const HD_RESET: u32 = 2048u;

struct SgdHdHyper {
    flags: u32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    lr: f32,
    hypergrad_lr: f32,
    pad0: u32,
    pad1: u32,
}

struct SgdHdTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<SgdHdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<SgdHdTensor>;
@group(0) @binding(7) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> prev_direction: array<vec4<f32>>;

// L2 decay added to the gradient (the reference code adds it before the dot).
fn with_decay(g: vec4<f32>, p: vec4<f32>, wd: f32) -> vec4<f32> {
    if (wd != 0.0) {
        return g + wd * p;
    }
    return g;
}

@compute @workgroup_size(WG_SIZE)
fn sgd_hd_dot(
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
fn sgd_hd_lr(
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
fn sgd_hd_step(
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
        var d = g;
        if ((hp.flags & HD_MOMENTUM) != 0u) {
            let b0 = momentum_buffer[si];
            let m = sgd_momentum(b0, g, t.first != 0u, hp.momentum, hp.one_minus_dampening, (hp.flags & HD_NESTEROV) != 0u);
            momentum_buffer[si] = select(b0, m.buf, mask);
            d = m.dir;
        }
        // State padding is zero and stays zero.
        prev_direction[si] = select(vec4<f32>(0.0), d, mask);
        store_param(i, select(p0, p0 - alpha * d, mask));
    }
}

// sgd_hd.wgsl: SGD-HD and SGDN-HD, hypergradient descent on the lr (Baydin et al., ICLR 2018),
// three dispatches per step whatever the tensor count, no host round trip. Requires
// common.wgsl, reduce.wgsl and hd.wgsl (the dot and lr passes, HD_GLOBAL, HD_RESET,
// with_decay). Mirrors src/optim/sgd_hd.rs (update_learned) and src/optim/hd.rs.
// Bindings: 0 SgdHdHyper per parameter group, 3 SgdHdTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 momentum_buffer (a dummy when momentum == 0), 8 prev_direction,
// 10 partials (chunk dots, unused per-tensor entries, then each group's (lr, h, 0, 0)).
//   sgd_hd_dot   per chunk: hd.wgsl's hd_dot, partial sums of <g, d_prev>
//   sgd_hd_lr    per group: hd.wgsl's hd_lr, the fold and the learned lr
//   sgd_hd_step  per chunk: PyTorch SGD momentum on g (first step: buf = g; Nesterov
//                d = g + momentum * buf), p -= lr * d, d_prev = d

const HD_MOMENTUM: u32 = 256u;
const HD_NESTEROV: u32 = 512u;

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

// hd.wgsl's hd_dot folds with the group's hyperparameters.
alias ChunkArgs = SgdHdHyper;

@group(0) @binding(0) var<uniform> hypers: array<SgdHdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<SgdHdTensor>;
@group(0) @binding(7) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> prev_direction: array<vec4<f32>>;

@compute @workgroup_size(WG_SIZE)
fn sgd_hd_dot(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    hd_dot(wid, nwg, lid);
}

@compute @workgroup_size(RED_WG)
fn sgd_hd_lr(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    hd_lr(wid, nwg, lid);
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

// adagrad.wgsl: fused Adagrad step (lr_decay, initial_accumulator_value, weight decay, maximize).
// Requires common.wgsl. Bindings: 0 AdagradHyper per parameter group, 3 AdagradTensor table, 7 sum (rw).
// Mirrors src/optim/adagrad.rs::adagrad_update, in torch.optim.Adagrad's order:
//   g = maximize ? -grad : grad;  g += wd * p
//   sum += g * g;  p += (-clr * g) / (sqrt(sum) + eps)     with clr = lr / (1 + (t - 1) * lr_decay)
// clr depends on the tensor's own step count, so it comes per tensor from the host.

struct AdagradHyper {
    flags: u32,
    eps: f32,
    pad0: u32,
    pad1: u32,
}

struct AdagradTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    neg_clr: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdagradHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdagradTensor>;
@group(0) @binding(7) var<storage, read_write> sum: array<vec4<f32>>;

fn adagrad_vec(i: u32, si: u32, mask: vec4<bool>, t: AdagradTensor, hp: AdagradHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (t.weight_decay != 0.0) {
        g = g + t.weight_decay * p0;
    }
    let s0 = sum[si];
    let s = s0 + g * g;
    sum[si] = select(s0, s, mask);
    let root = sqrt(s) + hp.eps;
    store_param(i, select(p0, p0 + (t.neg_clr * g) / root, mask));
}

@compute @workgroup_size(WG_SIZE)
fn adagrad_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    // Idle invocations (past the end of a short chunk) leave before the tensor-table load.
    if (!c.ok || lid * 4u >= c.len) {
        return;
    }
    if (PACKED) {
        // Several small tensors: each vec4 loads its own tensor's scalars (neighbours share
        // them, so the loads mostly hit the cache).
        for (var k = 0u; k < VEC_PER_LANE; k++) {
            let v = k * WG_SIZE + lid;
            if (v * 4u >= c.len) {
                break;
            }
            let pv = packed_vec(c, v);
            let t = tensors[pv.x];
            if (t.live == 0u) {
                continue;
            }
            adagrad_vec(c.base + v, c.sbase + v, first_lanes(pv.y), t, hypers[t.group]);
        }
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup; the
    // group comes with the chunk, so this load does not wait for the tensor table's.
    let hp = hypers[c.group];
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        adagrad_vec(c.base + v, c.sbase + v, lane_mask(c.len, v), t, hp);
    }
}

// schedule_free.wgsl: Schedule-Free AdamW and SGD (Defazio et al. 2024; the `schedulefree`
// 1.4.1 package, for-loop path), and their train/eval mode swap. Requires common.wgsl
// and elementwise.wgsl.
// Bindings: 0 ScheduleFreeHyper per parameter group (this step's c, lr_k and bc2 come from the
// group's host scalars k, lr_max, weight_sum), 3 ScheduleFreeTensor table, 7 z, 8 exp_avg_sq
// (AdamW only; a dummy for SGD). In train mode the params hold y.
// Mirrors src/optim/schedule_free.rs:
//   AdamW: v = beta2 * v + ((1 - beta2) * g) * g;  d = g / (sqrt(v / bc2) + eps)
//   SGD:   d = g
//   on the tensor's first step z is read as the param (the package clones it then)
//   if wd != 0: d = d + wd * y
//   y = lerp(y, z, c);  y = y + (lr_k * (beta1 * (1 - c) - 1)) * d;  z = z - lr_k * d
// The swap: p = lerp(p, z, w), w = 1 - 1/beta1 (eval: y -> x) or 1 - beta1 (train: x -> y), on
// the tensors whose table entry is live (those that have a z).

struct ScheduleFreeHyper {
    flags: u32,
    // w / W of this step (1 on the group's first step: y = z)
    c: f32,
    // lr_k: the group's lr with the built-in warmup applied
    lr: f32,
    // lr_k * (beta1 * (1 - c) - 1), formed in f64
    y_coef: f32,
    weight_decay: f32,
    // AdamW only
    beta2: f32,
    one_minus_beta2: f32,
    // 1 - beta2^(k+1), with the group's k
    bias_correction2: f32,
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct ScheduleFreeTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // 1 on the tensor's first step: z starts as a copy of the param
    first: u32,
    // the swap's lerp weight (swap passes only)
    swap_w: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<ScheduleFreeHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<ScheduleFreeTensor>;
@group(0) @binding(7) var<storage, read_write> z: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

const SF_ADAMW: u32 = 0u;
const SF_SGD: u32 = 1u;
const SF_SWAP: u32 = 2u;

fn sf_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: ScheduleFreeTensor, hp: ScheduleFreeHyper) {
    let p0 = params[i];
    let z_old = z[si];
    if (mode == SF_SWAP) {
        store_param(i, select(p0, lerp_torch(p0, z_old, t.swap_w), mask));
        return;
    }
    let g = load_grad(i, hp.flags);
    var d = g;
    if (mode == SF_ADAMW) {
        let v0 = exp_avg_sq[si];
        let v = v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g;
        exp_avg_sq[si] = select(v0, v, mask);
        d = g / (sqrt(v / hp.bias_correction2) + hp.eps);
    }
    if (hp.weight_decay != 0.0) {
        d = d + hp.weight_decay * p0;
    }
    var z0 = z_old;
    if (t.first != 0u) {
        z0 = p0;
    }
    let y = lerp_torch(p0, z0, hp.c);
    store_param(i, select(p0, y + hp.y_coef * d, mask));
    z[si] = select(z_old, z0 - hp.lr * d, mask);
}

// elementwise.wgsl's hook: the three passes share sf_vec, told apart by `mode`.
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: ScheduleFreeTensor, hp: ScheduleFreeHyper) {
    sf_vec(mode, i, si, mask, t, hp);
}

@compute @workgroup_size(WG_SIZE)
fn schedule_free_adamw_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(SF_ADAMW, wid, nwg, lid);
}

@compute @workgroup_size(WG_SIZE)
fn schedule_free_sgd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(SF_SGD, wid, nwg, lid);
}

// The mode swap of both rules (they share a bind group layout: the SGD segment binds a dummy
// as exp_avg_sq).
@compute @workgroup_size(WG_SIZE)
fn schedule_free_swap(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(SF_SWAP, wid, nwg, lid);
}

// adagrad.wgsl: fused Adagrad step (lr_decay, initial_accumulator_value, weight decay, maximize).
// Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 AdagradHyper per parameter group, 3 AdagradTensor table, 7 sum (rw).
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

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: AdagradTensor, hp: AdagradHyper) {
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
    elementwise_chunk(0u, wid, nwg, lid);
}

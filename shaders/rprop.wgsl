// rprop.wgsl: fused Rprop step (maximize). Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 RpropHyper per parameter group, 3 RpropTensor table, 7 prev, 8 step_size (rw).
// Mirrors src/optim/rprop.rs (Rule::update), in torch.optim.Rprop's order (foreach=False):
//   g = maximize ? -grad : grad
//   first step: prev = 0, step_size = lr (torch creates the state then)
//   s = sign(g * prev);  f = s > 0 ? etaplus : (s < 0 ? etaminus : 1)
//   step_size = min(max(step_size * f, step_size_min), step_size_max)
//   g = (f == etaminus) ? 0 : g;  p = p - sign(g) * step_size;  prev = g
// Signs, factors and clamps are written as compares and selects (NaN propagates as in torch;
// WGSL's clamp may be a median and its sign and min/max leave NaN unspecified).

struct RpropHyper {
    flags: u32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct RpropTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // 1 on the tensor's first step
    first: u32,
    // the initial step size
    lr: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<RpropHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<RpropTensor>;
@group(0) @binding(7) var<storage, read_write> prev: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> step_size: array<vec4<f32>>;

// torch.sign: 1, -1, 0 for both zeros, NaN for NaN.
fn sign3(x: vec4<f32>) -> vec4<f32> {
    let z = select(x, vec4<f32>(0.0), x == vec4<f32>(0.0));
    return select(select(z, vec4<f32>(-1.0), x < vec4<f32>(0.0)), vec4<f32>(1.0), x > vec4<f32>(0.0));
}

// torch.clamp(x, lo, hi) = min(max(x, lo), hi), NaN propagated.
fn clamp_torch(x: vec4<f32>, lo: f32, hi: f32) -> vec4<f32> {
    let y = select(x, vec4<f32>(lo), x < vec4<f32>(lo));
    return select(y, vec4<f32>(hi), y > vec4<f32>(hi));
}

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: RpropTensor, hp: RpropHyper) {
    let p0 = params[i];
    let g = load_grad(i, hp.flags);
    let prev0 = prev[si];
    let size0 = step_size[si];
    var pv = prev0;
    var sv = size0;
    if (t.first != 0u) {
        pv = vec4<f32>(0.0);
        sv = vec4<f32>(t.lr);
    }
    let prod = g * pv;
    // sign(prod) replaced by the factors; a NaN sign stays NaN.
    let f0 = select(prod, vec4<f32>(1.0), prod == vec4<f32>(0.0));
    let f1 = select(f0, vec4<f32>(hp.etaminus), prod < vec4<f32>(0.0));
    let f = select(f1, vec4<f32>(hp.etaplus), prod > vec4<f32>(0.0));
    let size = clamp_torch(sv * f, hp.step_size_min, hp.step_size_max);
    let gm = select(g, vec4<f32>(0.0), f == vec4<f32>(hp.etaminus));
    step_size[si] = select(size0, size, mask);
    prev[si] = select(prev0, gm, mask);
    store_param(i, select(p0, p0 - sign3(gm) * size, mask));
}

@compute @workgroup_size(WG_SIZE)
fn rprop_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

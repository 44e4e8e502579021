// sgd.wgsl: fused SGD step (momentum, dampening, Nesterov, weight decay, maximize).
// Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 SgdHyper per parameter group, 3 SgdTensor table, 7 momentum_buffer (rw; a dummy
// when momentum == 0). Mirrors src/optim/sgd.rs::sgd_update, in torch.optim.SGD's order:
//   g = maximize ? -grad : grad;  g += wd * p
//   buf = first ? g : momentum * buf + (1 - dampening) * g;  g = nesterov ? g + momentum * buf : buf
//   p += -lr * g

const SGD_MOMENTUM: u32 = 256u;
const SGD_NESTEROV: u32 = 512u;

struct SgdHyper {
    flags: u32,
    momentum: f32,
    one_minus_dampening: f32,
    pad: u32,
}

struct SgdTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    // 1 on the tensor's first step: PyTorch initialises the buffer to the gradient itself
    first: u32,
    neg_lr: f32,
    weight_decay: f32,
    // to 32 bytes: an odd 20-byte stride costs measurably on lavapipe
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<SgdHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<SgdTensor>;
@group(0) @binding(7) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: SgdTensor, hp: SgdHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (t.weight_decay != 0.0) {
        g = g + t.weight_decay * p0;
    }
    if ((hp.flags & SGD_MOMENTUM) != 0u) {
        let b0 = momentum_buffer[si];
        let m = sgd_momentum(b0, g, t.first != 0u, hp.momentum, hp.one_minus_dampening, (hp.flags & SGD_NESTEROV) != 0u);
        momentum_buffer[si] = select(b0, m.buf, mask);
        g = m.dir;
    }
    store_param(i, select(p0, p0 + t.neg_lr * g, mask));
}

@compute @workgroup_size(WG_SIZE)
fn sgd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

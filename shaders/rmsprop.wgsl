// rmsprop.wgsl: fused RMSprop step (centered, momentum, weight decay, maximize).
// Requires common.wgsl and elementwise.wgsl.
// Bindings: 0 RmspropHyper per parameter group, 3 RmspropTensor table, 7 square_avg,
// 8 momentum_buffer (a dummy unless momentum > 0), 9 grad_avg (a dummy unless centered).
// Mirrors src/optim/rmsprop.rs::rmsprop_update, in torch.optim.RMSprop's order:
//   g = maximize ? -grad : grad;  g += wd * p
//   sq = alpha * sq + ((1 - alpha) * g) * g
//   centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(sq - ga*ga)   (no clamp, like PyTorch)
//   avg += eps                                                       (eps OUTSIDE the sqrt)
//   momentum: buf = momentum * buf + g / avg; p += -lr * buf   else  p += (-lr * g) / avg

const RMS_CENTERED: u32 = 256u;
const RMS_MOMENTUM: u32 = 512u;

struct RmspropHyper {
    flags: u32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    momentum: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct RmspropTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    neg_lr: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> hypers: array<RmspropHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<RmspropTensor>;
@group(0) @binding(7) var<storage, read_write> square_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> grad_avg: array<vec4<f32>>;

// One vec4 (elementwise.wgsl's hook; one pass, so `mode` is unused).
fn update_vec(mode: u32, i: u32, si: u32, mask: vec4<bool>, t: RmspropTensor, hp: RmspropHyper) {
    let p0 = params[i];
    var g = load_grad(i, hp.flags);
    if (t.weight_decay != 0.0) {
        g = g + t.weight_decay * p0;
    }
    let sq0 = square_avg[si];
    let sq = sq0 * hp.alpha + (hp.one_minus_alpha * g) * g;
    square_avg[si] = select(sq0, sq, mask);
    var avg: vec4<f32>;
    if ((hp.flags & RMS_CENTERED) != 0u) {
        let ga0 = grad_avg[si];
        let ga = lerp_torch(ga0, g, hp.one_minus_alpha);
        grad_avg[si] = select(ga0, ga, mask);
        avg = sqrt(sq - ga * ga);
    } else {
        avg = sqrt(sq);
    }
    avg = avg + hp.eps;
    if ((hp.flags & RMS_MOMENTUM) != 0u) {
        let b0 = momentum_buffer[si];
        let b = b0 * hp.momentum + g / avg;
        momentum_buffer[si] = select(b0, b, mask);
        store_param(i, select(p0, p0 + t.neg_lr * b, mask));
    } else {
        store_param(i, select(p0, p0 + (t.neg_lr * g) / avg, mask));
    }
}

@compute @workgroup_size(WG_SIZE)
fn rmsprop_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    elementwise_chunk(0u, wid, nwg, lid);
}

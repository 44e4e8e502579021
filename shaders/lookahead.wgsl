// lookahead.wgsl: the Lookahead sync (Zhang et al. 2019) over every wrapped tensor, one dispatch
// per binding window of the wrapped tensors' segment layout (plain chunks only: packed chunks
// would need windows and a dispatch of their own). Requires common.wgsl.
// Bindings (the optimizer-step convention, so the pipeline cache's layouts serve it):
//   0 LookaheadHyper (one struct, not a per-group array: alpha is one value), 1 Window,
//   2 chunks of the wrapped tensors, 3 LookaheadTensor table, 5 params (the fast weights),
//   7 slow (rw, the wrapped tensors only, in segment layout). 4 aux and 6 grads are bound by the
//   convention but not read.
// Mirrors src/lookahead.rs::sync_tensor, per element:
//   LOOKAHEAD_SYNC  slow = slow + alpha * (p - slow);  p = slow
//   LOOKAHEAD_INIT  slow = p (timm creates the slow buffer at its first sync, which thereby
//                   leaves p as it is: p + alpha * (p - p) is p exactly)
//   LOOKAHEAD_SKIP  nothing (timm: a tensor without a gradient at this sync)

const LOOKAHEAD_SKIP: u32 = 0u;
const LOOKAHEAD_SYNC: u32 = 1u;
const LOOKAHEAD_INIT: u32 = 2u;

struct LookaheadHyper {
    alpha: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

struct LookaheadTensor {
    // LOOKAHEAD_SKIP, LOOKAHEAD_SYNC or LOOKAHEAD_INIT
    mode: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> hyper: LookaheadHyper;
@group(0) @binding(3) var<storage, read> tensors: array<LookaheadTensor>;
@group(0) @binding(7) var<storage, read_write> slow: array<vec4<f32>>;

fn lookahead_vec(i: u32, si: u32, mask: vec4<bool>, mode: u32) {
    let p = params[i];
    let s0 = slow[si];
    var s = p;
    if (mode == LOOKAHEAD_SYNC) {
        s = s0 + hyper.alpha * (p - s0);
        params[i] = select(p, s, mask);
    }
    slow[si] = select(s0, s, mask);
}

@compute @workgroup_size(WG_SIZE)
fn lookahead_sync(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok || lid * 4u >= c.len) {
        return;
    }
    let mode = tensors[c.tensor].mode;
    if (mode == LOOKAHEAD_SKIP) {
        return;
    }
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        lookahead_vec(c.base + v, c.sbase + v, lane_mask(c.len, v), mode);
    }
}

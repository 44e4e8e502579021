// norm.wgsl: per-tensor and global norms of one or two arena-shaped buffers, and the
// global-norm clip coefficient. Requires common.wgsl and reduce.wgsl.
// Bindings: 0 NormHyper, 1 Window, 2 chunks, 3 ChunkRange table (static), 5 source a
// (read_write only because common.wgsl declares it so; never written), 6 source b (a dummy
// unless NORM_HAS_B), 10 partials, 12 out.
// out[0] = (clip coefficient, total norm of a, total norm of b, 0). The coefficient is what the
// optimizer kernels read as aux[0] when clipping is armed, so clipping costs no extra pass over
// the gradients and no host round trip. Mirrors src/norm.rs (f64 on the CPU).

const NORM_HAS_B: u32 = 256u;

// Set (in the pipeline key) when source a is the arena's 16-bit gradients: this file is then
// composed with io_packed16.wgsl, the gradients are bound at 6 and widened by grad_raw, and 5
// holds the (unread) master weights. The native-f16 path stores the same bytes.
override NORM_A_GRADS: bool = false;

fn source_a(i: u32) -> vec4<f32> {
    if (NORM_A_GRADS) {
        return grad_raw(i);
    }
    return params[i];
}
const NORM_INF: u32 = 512u;
const NORM_CLIP: u32 = 1024u;

struct NormHyper {
    flags: u32,
    n_tensors: u32,
    max_norm: f32,
    pad: u32,
}

struct ChunkRange {
    first: u32,
    count: u32,
}

@group(0) @binding(0) var<uniform> nh: NormHyper;
@group(0) @binding(3) var<storage, read> ranges: array<ChunkRange>;
@group(0) @binding(12) var<storage, read_write> out: array<vec4<f32>>;

// norm_partials' virtual lanes (reduce.wgsl's fold_chunk_lanes): sums and maxima. They need
// nothing loaded per workgroup: ChunkArgs is the uniform, passed but not read (below).
alias ChunkArgs = NormHyper;
alias LaneAcc = vec4<f32>;

// Sum of squares and max |x| of vec4 v of a (and of b, with NORM_HAS_B). NORM_HAS_B is tested
// on `nh` itself, as before the fold was shared: tested on the argument, the flags load moves
// before the loop and lavapipe compiles a different loop.
fn reduce_vec(acc: LaneAcc, _nh: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc {
    let mask = lane_mask(c.len, v);
    let sa = lane_stats(source_a(c.base + v), mask);
    var sb = vec2<f32>(0.0);
    if ((nh.flags & NORM_HAS_B) != 0u) {
        sb = lane_stats(grad_raw(c.base + v), mask);
    }
    return red_combine(acc, vec4<f32>(sa, sb));
}

fn set_lane(l: u32, acc: LaneAcc) {
    set_lane_partial(l, acc);
}

@compute @workgroup_size(WG_SIZE)
fn norm_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    fold_chunk_lanes(c, nh, lid);
    store_chunk_partial(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn norm_combine(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = group_index(wid, nwg);
    if (t >= nh.n_tensors) {
        return;
    }
    let r = ranges[t];
    let v = fold_chunks(r.first, r.count, lid);
    if (lid == 0u) {
        partials[win.tensor_base + t] = v;
    }
}

fn norm_of(sumsq: f32, maxabs: f32) -> f32 {
    if ((nh.flags & NORM_INF) != 0u) {
        return maxabs;
    }
    return sqrt(sumsq);
}

// One workgroup: the global norm over all tensors (PyTorch: the norm of the per-tensor norms,
// which for p = 2 is the square root of the total sum of squares) and the clip coefficient
// min(max_norm / (total + 1e-6), 1), applied always, as torch.nn.utils.clip_grad_norm_ does.
@compute @workgroup_size(RED_WG)
fn norm_global(@builtin(local_invocation_index) lid: u32) {
    let v = fold_chunks(win.tensor_base, nh.n_tensors, lid);
    if (lid == 0u) {
        let total_a = norm_of(v.x, v.y);
        let total_b = norm_of(v.z, v.w);
        var coef = 1.0;
        if ((nh.flags & NORM_CLIP) != 0u) {
            // torch.clamp(max=1) keeps a NaN coefficient (a NaN norm), so the clipped
            // gradients become NaN exactly as clip_grad_norm_ makes them; WGSL's min would not.
            let c = nh.max_norm / (total_a + 1e-6);
            coef = select(min(c, 1.0), c, is_nan(c));
        }
        out[0] = vec4<f32>(coef, total_a, total_b, 0.0);
    }
}

// common.wgsl: the prelude shared by every wgpu-optim elementwise kernel. src/shaders.rs puts it
// in front of each kernel file with concat!(include_str!(..)); WGSL has no #include.
//
// The arena is processed in chunks of at most CHUNK elements, one workgroup each. A plain chunk
// holds part of one tensor, so the workgroup reads its tensor's per-step scalars once (apex
// multi_tensor_apply, without launch splitting). A packed chunk holds several whole small
// tensors that sit next to each other (elementwise optimizers only): without it a 100-element
// tensor would leave 95% of a workgroup idle. Each vec4 of a packed chunk finds its tensor and
// its valid lanes in a per-vec4 info table stored after the chunk table (one u32 per vec4:
// tensor in the low 30 bits, lanes - 1 in the top 2). Tensors start on a 4-element boundary, so every chunk is a run of vec4s; the last
// vec4 of a tensor may hold padding lanes, which are masked on store and therefore stay zero.
//
// One dispatch covers one optimizer segment: a subset of the arena's tensors that one rule
// updates. Its chunk table names each chunk's place in the params/grads arena (`start`) and in
// the segment's own state buffers (`state_start`), which hold only the segment's tensors, so
// state memory is proportional to what the segment optimizes.
//
// Binding convention (group 0), mirrored by src/shaders.rs (KernelDef::bindings):
//   0  uniform             hypers         <Kernel>Hyper per parameter group (every hyperparameter
//                                         PyTorch allows per param_group, and the mode flags);
//                                         a fixed-size uniform array: indexing it needs no
//                                         runtime length, unlike a storage array
//                                         (measurably cheaper per workgroup on lavapipe)
//   1  uniform             Window         chunks covered by this dispatch, start of the windows
//   2  storage, read       chunks         static chunk table of the segment
//   3  storage, read       tensors        per-tensor scalars for this step (type set by the
//                                         kernel); its `group` field indexes `hypers`
//   4  storage, read       aux            GPU-computed scalars; aux[0] is the gradient scale
//   5  storage, read_write params         this window of the arena, as vec4
//   6  storage, read       grads          same window of the gradient arena
//   7+ storage, read_write state buffers  this window of the segment's state buffers
//   10 storage, read_write partials       per-chunk, then per-tensor reduction results (reduce.wgsl)
//   11 storage, read_write model          16-bit model copy, two values per u32 (io_packed16.wgsl
//                                         only; binding 6 then holds 16-bit gradients the same way)
//
// WG_SIZE, VEC_PER_LANE and CHUNK have Rust twins in src/shaders.rs; tests/shaders.rs checks
// that the two agree.

// A chunk's work split: WG_SIZE invocations, each updating VEC_PER_LANE vec4s strided by
// WG_SIZE, with WG_SIZE * VEC_PER_LANE * 4 == CHUNK always. Pipeline-overridable so the
// elementwise update passes run the split measured fastest on the adapter (src/tune.rs);
// every split gives bit-identical results, since each element's update does not depend on
// which invocation runs it. The passes that reduce take it too: they fold RED_LANES virtual
// lanes whatever WG_SIZE is (reduce.wgsl), so the order of their sums does not vary.
override WG_SIZE: u32 = 256u;
override VEC_PER_LANE: u32 = 4u;
// Most parameter groups one segment holds (the length of each kernel's `hypers` array).
const MAX_SEGMENT_GROUPS: u32 = 256u;
const CHUNK: u32 = 4096u;

// Set (in the pipeline key) when a segment's state buffers are laid out exactly as its
// params: a segment over every tensor of the arena, the usual case. Then the state index is the
// params index and the chunk's state_start is never loaded, which on lavapipe is worth ~7% of
// a step over 10,000 small tensors.
override STATE_AT_PARAMS: bool = false;

// Set (in the pipeline key) for the dispatches over packed chunks: a segment's packed chunks
// sit after its plain ones, in windows of their own, so each kind runs a pipeline without the
// other's branch (a kernel with both paths was ~12% slower on one large tensor on lavapipe).
override PACKED: bool = false;

// Flags shared by all kernels (bits 0..7). Kernel-specific flags start at bit 8.
const FLAG_MAXIMIZE: u32 = 1u;
const FLAG_GRAD_SCALE: u32 = 2u;

// A chunk table row, read as a vec4<u32> so that the info table behind the rows can be read
// from the same binding:
//   x  the tensor (segment-local); for a packed chunk, its first entry in the info table
//   y  first vec4 of the chunk, counted from the start of the arena
//   z  elements in this chunk (1..=CHUNK) in bits 0..15; the tensor's parameter group among the
//      segment's groups in bits 16..30; CHUNK_PACKED in bit 31
//   w  first vec4 of the chunk in the segment's state buffers
const CHUNK_PACKED: u32 = 0x80000000u;

struct Window {
    chunk_base: u32,
    chunk_count: u32,
    // first vec4 of this binding window, counted from the start of the arena
    vec_base: u32,
    // where per-tensor results start in `partials` (reduce.wgsl): after one entry per chunk
    tensor_base: u32,
    // first vec4 of this binding window of the state buffers
    state_base: u32,
    // tensors in the segment (the per-tensor passes' grid covers these)
    n_tensors: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(1) var<uniform> win: Window;
@group(0) @binding(2) var<storage, read> chunks: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;
// params (binding 5), grads (binding 6), `grad_raw` and `store_param` come from the storage
// prelude that follows this file: io_f32.wgsl (the f32 arena), or io_packed16.wgsl /
// io_native16.wgsl after half.wgsl (16-bit model copy and gradients beside f32 master weights).

struct ChunkRef {
    ok: bool,
    // several whole tensors, each vec4's in the info table
    packed: bool,
    // the tensor; for a packed chunk, its first info-table entry
    tensor: u32,
    // first vec4 of the chunk inside the bound params / grads window
    base: u32,
    // first vec4 of the chunk inside the bound state window
    sbase: u32,
    len: u32,
    // index into the kernel's `hypers`
    group: u32,
}

// The chunk this workgroup updates. Grids wider than 65535 workgroups spill into y, so the
// workgroup's linear id is x + y * width.
fn chunk_for(wid: vec3<u32>, nwg: vec3<u32>) -> ChunkRef {
    var r: ChunkRef;
    let local = wid.x + wid.y * nwg.x;
    if (local >= win.chunk_count) {
        r.ok = false;
        return r;
    }
    let c = chunks[win.chunk_base + local];
    r.ok = true;
    r.tensor = c.x;
    r.base = c.y - win.vec_base;
    if (STATE_AT_PARAMS) {
        r.sbase = r.base;
    } else {
        r.sbase = c.w - win.state_base;
    }
    r.len = c.z & 0xffffu;
    r.group = (c.z >> 16u) & 0x7fffu;
    r.packed = (c.z & CHUNK_PACKED) != 0u;
    return r;
}

// The v-th vec4 of a packed chunk: (its tensor, its valid lanes 1..=4). The info table starts
// right after the chunk rows (win.tensor_base rows), four entries per row.
fn packed_vec(r: ChunkRef, v: u32) -> vec2<u32> {
    let j = r.tensor + v;
    let e = chunks[win.tensor_base + j / 4u][j % 4u];
    return vec2<u32>(e & 0x3fffffffu, (e >> 30u) + 1u);
}

// The first n lanes of a vec4.
fn first_lanes(n: u32) -> vec4<bool> {
    return vec4<bool>(0u < n, 1u < n, 2u < n, 3u < n);
}

// Which lanes of the chunk's v-th vec4 belong to the tensor (the rest is padding).
fn lane_mask(len: u32, v: u32) -> vec4<bool> {
    let first = v * 4u;
    return vec4<bool>(first < len, first + 1u < len, first + 2u < len, first + 3u < len);
}

// The gradient as every torch.optim rule first sees it: widened to f32 by the storage
// prelude, scaled by a global-norm clip coefficient (or the loss scale's inverse: the
// in-kernel unscale) when one is armed, then negated for maximize.
fn load_grad(i: u32, flags: u32) -> vec4<f32> {
    var g = grad_raw(i);
    if ((flags & FLAG_GRAD_SCALE) != 0u) {
        g = g * aux[0];
    }
    if ((flags & FLAG_MAXIMIZE) != 0u) {
        g = -g;
    }
    return g;
}

// NaN test on the bits: compilers may fold `x != x` away, and WGSL leaves max() with a NaN
// operand implementation-defined (most GPUs return the other operand).
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// max that propagates NaN, as torch.maximum and torch's inf norm do (the first NaN wins).
fn max_nan(a: f32, b: f32) -> f32 {
    return select(select(max(a, b), b, is_nan(b)), a, is_nan(a));
}

// max_nan on each lane.
fn max_nan4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let nan_a = (bitcast<vec4<u32>>(a) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    let nan_b = (bitcast<vec4<u32>>(b) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return select(select(max(a, b), b, nan_b), a, nan_a);
}

// torch.lerp's CPU formula: the form used depends on |w| < 0.5, for accuracy near both ends.
fn lerp_torch(start: vec4<f32>, end: vec4<f32>, w: f32) -> vec4<f32> {
    if (abs(w) < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

struct Momentum {
    // the new momentum buffer
    buf: vec4<f32>,
    // the direction the parameter moves along (before -lr)
    dir: vec4<f32>,
}

// PyTorch's SGD momentum, shared by sgd.wgsl and lars.wgsl: on a tensor's first step the buffer
// is the gradient itself (no dampening); afterwards momentum * buf + (1 - dampening) * g.
fn sgd_momentum(b0: vec4<f32>, g: vec4<f32>, first: bool, momentum: f32, one_minus_dampening: f32, nesterov: bool) -> Momentum {
    var m: Momentum;
    m.buf = g;
    if (!first) {
        m.buf = b0 * momentum + one_minus_dampening * g;
    }
    m.dir = m.buf;
    if (nesterov) {
        m.dir = g + momentum * m.buf;
    }
    return m;
}

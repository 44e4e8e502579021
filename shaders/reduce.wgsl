// reduce.wgsl: deterministic segmented reductions over the arena. Requires common.wgsl; used by
// norm.wgsl, lars.wgsl and lamb.wgsl.
//
// Two passes, no float atomics (apex's multi_tensor_l2norm recipe):
//   1. per chunk (one workgroup of WG_SIZE): each invocation reduces its own lanes, then a
//      shared-memory halving tree reduces the workgroup; the result goes to partials[chunk].
//   2. per tensor (one workgroup of RED_SIZE): invocation i folds partials i, i + RED_SIZE, ...
//      of the tensor's chunks in order, then the same tree; the result goes to
//      partials[tensor_base + tensor].
// Every sum is a fixed tree whose shape depends only on sizes, so results are bitwise
// reproducible. A value is a vec4: (sum of squares of a, max |a|, sum of squares of b, max |b|),
// so one pass can take two norms (LARS needs |p| and |g|, LAMB |p| and |u|).
//
// Error bound of the sum of squares (nonnegative terms, f32 unit roundoff u = 2^-24): the
// deepest chain of additions is 3 (lanes) + 6 (chunk tree) + ceil(chunks / RED_SIZE) (sequential
// fold) + 8 (tensor tree). For a 16M-element tensor (65 536 chunks) that is 273 additions, so the
// relative error is at most 273 u = 1.6e-5 for the sum and half that, 8.2e-6, for the norm.

const RED_SIZE: u32 = 256u;

@group(0) @binding(10) var<storage, read_write> partials: array<vec4<f32>>;

var<workgroup> scratch: array<vec4<f32>, RED_SIZE>;

fn red_combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.x + b.x, max(a.y, b.y), a.z + b.z, max(a.w, b.w));
}

// Sum of squares and max |x| of the lanes selected by `mask`, as (sumsq, maxabs).
fn lane_stats(x: vec4<f32>, mask: vec4<bool>) -> vec2<f32> {
    let y = select(vec4<f32>(0.0), x, mask);
    let sq = y * y;
    let a = abs(y);
    return vec2<f32>(((sq.x + sq.y) + sq.z) + sq.w, max(max(a.x, a.y), max(a.z, a.w)));
}

// Reduces scratch[0..n) into scratch[0] (n a power of two); every invocation must call it.
fn tree_reduce(lid: u32, n: u32) {
    var s = n / 2u;
    loop {
        if (s == 0u) {
            break;
        }
        workgroupBarrier();
        if (lid < s) {
            scratch[lid] = red_combine(scratch[lid], scratch[lid + s]);
        }
        s = s / 2u;
    }
    workgroupBarrier();
}

// Pass 1 epilogue: reduces each invocation's `v` over the chunk workgroup into partials[chunk].
fn store_chunk_partial(chunk: u32, lid: u32, v: vec4<f32>) {
    scratch[lid] = v;
    tree_reduce(lid, WG_SIZE);
    if (lid == 0u) {
        partials[chunk] = scratch[0];
    }
}

// Pass 2: folds chunks [first, first + count) of partials; the result is valid in every
// invocation.
fn fold_chunks(first: u32, count: u32, lid: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var i = lid; i < count; i += RED_SIZE) {
        acc = red_combine(acc, partials[first + i]);
    }
    scratch[lid] = acc;
    tree_reduce(lid, RED_SIZE);
    let r = scratch[0];
    // Keep the next use of scratch from racing with this read.
    workgroupBarrier();
    return r;
}

// Linear workgroup id of a grid that may spill into y.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

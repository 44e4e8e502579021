// reduce.wgsl: deterministic segmented reductions over the arena. Requires common.wgsl; used by
// norm.wgsl, lars.wgsl and lamb.wgsl.
//
// Two passes, no float atomics (apex's multi_tensor_l2norm recipe):
//   1. per chunk (one workgroup of WG_SIZE): each invocation folds its own lanes, then the
//      workgroup is reduced (workgroup_reduce); the result goes to partials[chunk].
//   2. per tensor (one workgroup of RED_SIZE): invocation i folds partials i, i + RED_SIZE, ...
//      of the tensor's chunks in order, then the same workgroup reduction; the result goes to
//      partials[tensor_base + tensor].
// Every sum has a fixed shape that depends only on sizes, so results are bitwise reproducible.
// A value is a vec4: (sum of squares of a, max |a|, sum of squares of b, max |b|), so one pass
// can take two norms (LARS needs |p| and |g|, LAMB |p| and |u|).
//
// workgroup_reduce folds groups of 16 entries, then the group results: two barriers instead of
// a binary tree's log2(n), which matters on CPU adapters (lavapipe pays per barrier and
// invocation) and costs nothing measurable on GPUs.
//
// Error bound of a sum of squares (nonnegative terms, f32 unit roundoff u = 2^-24): the
// longest chain of additions is 3 (lanes) + VEC_PER_LANE - 1 + 30 (chunk workgroup of 256:
// 15 + 15) + ceil(chunks / RED_SIZE) (sequential fold) + 16 (tensor workgroup of 32: 15 + 1).
// A 16M-element tensor has 4096 chunks, so the chain is 180 long: relative error at most
// 180 u = 1.08e-5 for the sum and half that, 5.4e-6, for the norm.

const RED_SIZE: u32 = 32u;

@group(0) @binding(10) var<storage, read_write> partials: array<vec4<f32>>;

var<workgroup> scratch: array<vec4<f32>, WG_SIZE>;
var<workgroup> group_sums: array<vec4<f32>, 16>;

// NaN test on the bits: compilers may fold `x != x` away, and WGSL leaves max() with a NaN
// operand implementation-defined (most GPUs return the other operand).
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// max that propagates NaN, as torch's inf norm does: a NaN anywhere gives a NaN norm. Sums
// propagate NaN by IEEE arithmetic already.
fn max_nan(a: f32, b: f32) -> f32 {
    return select(select(max(a, b), b, is_nan(b)), a, is_nan(a));
}

fn red_combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.x + b.x, max_nan(a.y, b.y), a.z + b.z, max_nan(a.w, b.w));
}

// Sum of squares and max |x| of the lanes selected by `mask`, as (sumsq, maxabs).
fn lane_stats(x: vec4<f32>, mask: vec4<bool>) -> vec2<f32> {
    let y = select(vec4<f32>(0.0), x, mask);
    let sq = y * y;
    let a = abs(y);
    return vec2<f32>(((sq.x + sq.y) + sq.z) + sq.w, max_nan(max_nan(a.x, a.y), max_nan(a.z, a.w)));
}

// Reduces every invocation's `v` over a workgroup of n invocations (n a power of two, 16 <= n
// <= 256). Every invocation must call it; the result is valid in invocation 0 only (the others
// skip the last fold, which on CPU adapters would otherwise cost n x 16 shared-memory loads).
fn workgroup_reduce(lid: u32, n: u32, v: vec4<f32>) -> vec4<f32> {
    scratch[lid] = v;
    workgroupBarrier();
    let groups = n / 16u;
    if (lid < groups) {
        var acc = scratch[lid * 16u];
        for (var j = 1u; j < 16u; j++) {
            acc = red_combine(acc, scratch[lid * 16u + j]);
        }
        group_sums[lid] = acc;
    }
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    if (lid == 0u) {
        total = group_sums[0];
        for (var j = 1u; j < groups; j++) {
            total = red_combine(total, group_sums[j]);
        }
    }
    return total;
}

// Pass 1 epilogue: reduces each invocation's `v` over the chunk workgroup into partials[chunk].
fn store_chunk_partial(chunk: u32, lid: u32, v: vec4<f32>) {
    let total = workgroup_reduce(lid, WG_SIZE, v);
    if (lid == 0u) {
        partials[chunk] = total;
    }
}

// Pass 2: folds entries [first, first + count) of partials; the result is valid in invocation 0.
fn fold_chunks(first: u32, count: u32, lid: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var i = lid; i < count; i += RED_SIZE) {
        acc = red_combine(acc, partials[first + i]);
    }
    return workgroup_reduce(lid, RED_SIZE, acc);
}

// Linear workgroup id of a grid that may spill into y.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

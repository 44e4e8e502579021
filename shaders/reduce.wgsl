// reduce.wgsl: deterministic segmented reductions over the arena. Requires common.wgsl; used by
// norm.wgsl, lars.wgsl and lamb.wgsl.
//
// Two passes, no float atomics (apex's multi_tensor_l2norm recipe):
//   1. per chunk (one workgroup of WG_SIZE): RED_LANES virtual lanes, lane l folding the
//      vec4s l, l + RED_LANES, ... (RED_VEC of them) in order, then the lanes are folded
//      (fold_scratch); the result goes to partials[chunk]. An invocation runs the virtual
//      lanes lid, lid + WG_SIZE, ..., so every work split (src/tune.rs) adds the same terms
//      in the same order: the bits do not depend on the split the adapter was tuned to.
//   2. per tensor (one workgroup of RED_WG): RED_SIZE virtual lanes, lane i folding partials
//      i, i + RED_SIZE, ... of the tensor's chunks in order, then the same fold; the result
//      goes to partials[tensor_base + tensor].
// Every sum has a fixed shape that depends only on sizes, so results are bitwise reproducible.
// A value is a vec4: (sum of squares of a, max |a|, sum of squares of b, max |b|), so one pass
// can take two norms (LARS needs |p| and |g|, LAMB |p| and |u|).
//
// fold_scratch folds groups of 16 entries, then the group results: two barriers instead of
// a binary tree's log2(n), which matters on CPU adapters (lavapipe pays per barrier and
// invocation) and costs nothing measurable on GPUs.
//
// Error bound of a sum of squares (nonnegative terms, f32 unit roundoff u = 2^-24): the
// longest chain of additions is 3 (lanes) + RED_VEC - 1 + 30 (256 virtual lanes:
// 15 + 15) + ceil(chunks / RED_SIZE) (sequential fold) + 16 (tensor workgroup of 32: 15 + 1).
// A 16M-element tensor has 4096 chunks, so the chain is 180 long: relative error at most
// 180 u = 1.08e-5 for the sum and half that, 5.4e-6, for the norm.

const RED_SIZE: u32 = 32u;
// Invocations of the per-tensor and per-group passes (pipeline-overridable, a power of two
// dividing RED_SIZE; min(32, the tuned chunk split) from the engine). Their folds run
// RED_SIZE virtual lanes whatever it is, so the sums keep one order.
override RED_WG: u32 = 32u;
// Virtual lanes per chunk and vec4s per virtual lane (RED_LANES * RED_VEC * 4 == CHUNK): the
// 256 x 4 split the reductions were written for, fixed whatever WG_SIZE is.
const RED_LANES: u32 = 256u;
const RED_VEC: u32 = 4u;

@group(0) @binding(10) var<storage, read_write> partials: array<vec4<f32>>;

var<workgroup> scratch: array<vec4<f32>, RED_LANES>;
var<workgroup> group_sums: array<vec4<f32>, 16>;

fn red_combine(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.x + b.x, max_nan(a.y, b.y), a.z + b.z, max_nan(a.w, b.w));
}

// Sum of squares of the lanes selected by `mask`: lane_stats' first value, without the max
// (and its NaN tests), for the passes that need L2 norms only (LARS, LAMB: about 3% of their
// step on lavapipe). norm.wgsl keeps lane_stats: a per-flag branch there measured slower.
fn lane_sumsq(x: vec4<f32>, mask: vec4<bool>) -> f32 {
    let y = select(vec4<f32>(0.0), x, mask);
    let sq = y * y;
    return ((sq.x + sq.y) + sq.z) + sq.w;
}

// Sum of squares and max |x| of the lanes selected by `mask`, as (sumsq, maxabs).
fn lane_stats(x: vec4<f32>, mask: vec4<bool>) -> vec2<f32> {
    let y = select(vec4<f32>(0.0), x, mask);
    let sq = y * y;
    let a = abs(y);
    return vec2<f32>(((sq.x + sq.y) + sq.z) + sq.w, max_nan(max_nan(a.x, a.y), max_nan(a.z, a.w)));
}

// Folds scratch[0 .. n] (n a multiple of 16, 16 <= n <= RED_LANES) in a fixed order: groups
// of 16 entries, then the group results. A workgroup of `width` invocations shares the group
// folds (invocation i does groups i, i + width, ...), which changes who adds, not what or in
// which order. Every invocation must call it; the result is valid in invocation 0 only (the
// others skip the last fold, which on CPU adapters would otherwise cost n x 16 shared-memory
// loads).
fn fold_scratch(lid: u32, n: u32, width: u32) -> vec4<f32> {
    workgroupBarrier();
    let groups = n / 16u;
    for (var gi = lid; gi < groups; gi += width) {
        var acc = scratch[gi * 16u];
        for (var j = 1u; j < 16u; j++) {
            acc = red_combine(acc, scratch[gi * 16u + j]);
        }
        group_sums[gi] = acc;
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

// The virtual lanes a chunk of `len` elements folds: those holding terms (lane l's first vec4
// is l), rounded up to whole groups of 16. The lanes past them hold no terms: their folds
// would only add +0 (and take max with +0) to sums of squares, absolute values and counts,
// which changes nothing, so a chunk of a 100-element tensor folds 16 lanes, not 256.
fn chunk_lanes(len: u32) -> u32 {
    let used = min(RED_LANES, (len + 3u) / 4u);
    return max(16u, (used + 15u) / 16u * 16u);
}

// Pass 1: virtual lane l's fold.
fn set_lane_partial(l: u32, v: vec4<f32>) {
    scratch[l] = v;
}

// Pass 1 over chunk c, shared by every family's per-chunk pass (norm_partials, lars_norms,
// lamb_moments, the caution counts, the hypergradient dots): each virtual lane l (those of
// chunk_lanes(c.len); an invocation runs l = lid, lid + WG_SIZE, ...) folds its vec4s l,
// l + RED_LANES, ... that lie in the chunk, in that order, starting from 0, then sets its
// partial (so the sums' order does not depend on the tuned split); store_chunk_partial or
// store_chunk_count follows. The family file (composed after this one) provides what a lane
// folds:
//   ChunkArgs    (alias or struct) what the pass loaded once per workgroup for reduce_vec:
//                hyperparameters, the tensor's row
//   LaneAcc      (alias) a lane's accumulator: vec4<f32> (set_lane_partial), or f32 for a
//                count (set_lane_count; a vec4 would carry three zero lanes through the loop)
//   fn reduce_vec(acc: LaneAcc, a: ChunkArgs, c: ChunkRef, v: u32) -> LaneAcc
//                acc with the chunk's vec4 v folded in
//   fn set_lane(l: u32, acc: LaneAcc)
//                set_lane_partial or set_lane_count
fn fold_chunk_lanes(c: ChunkRef, a: ChunkArgs, lid: u32) {
    for (var l = lid; l < chunk_lanes(c.len); l += WG_SIZE) {
        var acc = LaneAcc();
        for (var k = 0u; k < RED_VEC; k++) {
            let v = k * RED_LANES + l;
            if (v * 4u >= c.len) {
                break;
            }
            acc = reduce_vec(acc, a, c, v);
        }
        set_lane(l, acc);
    }
}

// Pass 1 epilogue: folds the virtual lanes of a chunk of `len` elements into partials[chunk].
// Every invocation must call it, after setting its lanes (chunk_lanes(len) of them).
fn store_chunk_partial(chunk: u32, lid: u32, len: u32) {
    let total = fold_scratch(lid, chunk_lanes(len), WG_SIZE);
    if (lid == 0u) {
        partials[chunk] = total;
    }
}

// Pass 2: folds entries [first, first + count) of partials; the result is valid in invocation 0.
fn fold_chunks(first: u32, count: u32, lid: u32) -> vec4<f32> {
    // Virtual lane vl folds entries vl, vl + RED_SIZE, ... in order.
    for (var vl = lid; vl < RED_SIZE; vl += RED_WG) {
        var acc = vec4<f32>(0.0);
        for (var i = vl; i < count; i += RED_SIZE) {
            acc = red_combine(acc, partials[first + i]);
        }
        scratch[vl] = acc;
    }
    return fold_scratch(lid, RED_SIZE, RED_WG);
}

// Linear workgroup id of a grid that may spill into y.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Caution (timm's Lion and ADOPT): per tensor, the fraction of elements whose update agrees in
// sign with the gradient, counted exactly. Pass 1 stores each chunk's (agreeing, elements)
// count in partials[chunk] (counts of at most CHUNK in f32 are exact); pass 2 sums a tensor's
// counts in u32 (exact at any size, unlike an f32 sum past 2^24) and stores the scale
// 1 / max(mean, 1e-3) in partials[win.tensor_base + tensor].

var<workgroup> count_sums: array<vec2<u32>, RED_SIZE>;

// How many of the lanes selected by `mask` have `k`.
fn count_lanes(k: vec4<bool>, mask: vec4<bool>) -> f32 {
    let c = select(vec4<f32>(0.0), vec4<f32>(1.0), k & mask);
    return ((c.x + c.y) + c.z) + c.w;
}

// Pass 1: virtual lane l's agreeing count.
fn set_lane_count(l: u32, agreeing: f32) {
    scratch[l] = vec4<f32>(agreeing, 0.0, 0.0, 0.0);
}

// Pass 1 epilogue: folds the virtual lanes' agreeing counts into partials[chunk] =
// (agreeing, elements, 0, 0). Every invocation must call it, after setting its lanes.
fn store_chunk_count(chunk: u32, lid: u32, len: u32) {
    let total = fold_scratch(lid, chunk_lanes(len), WG_SIZE);
    if (lid == 0u) {
        partials[chunk] = vec4<f32>(total.x, f32(len), 0.0, 0.0);
    }
}

// Pass 2: folds the counts of chunks [first, first + count) in u32 and stores tensor ti's
// caution scale (and the mean) in partials[win.tensor_base + ti]. Every invocation of the
// RED_WG workgroup must call it.
fn store_caution_scale(ti: u32, first: u32, count: u32, lid: u32) {
    for (var vl = lid; vl < RED_SIZE; vl += RED_WG) {
        var acc = vec2<u32>(0u);
        for (var j = vl; j < count; j += RED_SIZE) {
            let e = partials[first + j];
            acc += vec2<u32>(u32(e.x), u32(e.y));
        }
        count_sums[vl] = acc;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var total = vec2<u32>(0u);
        for (var j = 0u; j < RED_SIZE; j++) {
            total += count_sums[j];
        }
        if (total.y > 0u) {
            let mean = f32(total.x) / f32(total.y);
            let clamped = select(mean, 0.001, mean < 0.001);
            partials[win.tensor_base + ti] = vec4<f32>(1.0 / clamped, mean, 0.0, 0.0);
        }
    }
}

// Per-group reductions and learned scalars (hypergradient descent, Pass::Groups). Each
// parameter group of a segment keeps a vec4 in partials after the per-tensor entries, at
// learned_slot(group): x is the group's learned lr, y the last hypergradient. It persists
// from step to step (no pass but the group pass writes there).

// Where segment group gi's learned scalars sit in partials.
fn learned_slot(gi: u32) -> u32 {
    return win.tensor_base + win.n_tensors + gi;
}

// The sum of a * b over the lanes selected by `mask`, as ((x + y) + z) + w.
fn lane_dot(a: vec4<f32>, b: vec4<f32>, mask: vec4<bool>) -> f32 {
    let x = select(vec4<f32>(0.0), a * b, mask);
    return ((x.x + x.y) + x.z) + x.w;
}

// One RED_WG workgroup per group: virtual lane i folds the chunk partials i, i + RED_SIZE, ...
// of the segment (all chunks hold partials[0 .. win.tensor_base]) that belong to group gi
// (every one with `all`), in order, then the workgroup reduction; valid in invocation 0.
// Chunks of frozen tensors must hold zeros. The order depends only on the chunk table, so the
// result is bitwise reproducible; every group folding `all` gets the same bits.
fn fold_group_chunks(gi: u32, all: bool, lid: u32) -> vec4<f32> {
    for (var vl = lid; vl < RED_SIZE; vl += RED_WG) {
        var acc = vec4<f32>(0.0);
        for (var c = vl; c < win.tensor_base; c += RED_SIZE) {
            let grp = (chunks[c].z >> 16u) & 0x7fffu;
            if (all || grp == gi) {
                acc = red_combine(acc, partials[c]);
            }
        }
        scratch[vl] = acc;
    }
    return fold_scratch(lid, RED_SIZE, RED_WG);
}

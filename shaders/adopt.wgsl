// adopt.wgsl: ADOPT (Taniguchi et al. 2024) as timm.optim.Adopt, three dispatches per step
// whatever the tensor count. Requires common.wgsl and reduce.wgsl.
// Bindings: 0 AdoptHyper per parameter group, 3 AdoptTensor table, 4 aux (gradient scale),
// 5 params, 6 grads, 7 exp_avg, 8 exp_avg_sq, 10 partials (chunk partials (count, elements, 0, 0),
// then per tensor (caution scale, mean, 0, 0)). Mirrors src/optim/adopt.rs (AdoptConfig::update).
//   adopt_caution_count  per chunk:  caution groups, from step 2 on: count of m * g > 0 with m
//                                    the new first moment (adopt_moment)
//   adopt_caution_scale  per tensor: the count summed in u32 (exact),
//                                    scale = 1 / max(count / numel, 1e-3)
//   adopt_step           per chunk:  g = maximize ? -grad : grad; L2: g = fma(wd, p, g) (fma_exact)
//                                    first step: v = v + g*g, nothing else
//                                    decoupled: p = p + (-lr*wd) * p
//                                    n = g / max(sqrt(v), eps); clip: clamp(n, -c, c)
//                                    m = lerp(m, n, 1 - beta1)
//                                    p = p + (-lr) * (caution ? m * (m*g > 0 ? scale : 0) : m)
//                                    v = beta2 * v + ((1 - beta2) * g) * g
// Both chunk passes compute m from the same p, g, m, v with the same operations, so the count
// and the update agree bit for bit.

const ADOPT_CAUTION: u32 = 256u;
const ADOPT_DECOUPLED: u32 = 512u;
const ADOPT_CLIP: u32 = 1024u;

struct AdoptHyper {
    flags: u32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    neg_lr: f32,
    // -(lr * weight_decay), for decoupled decay
    neg_lr_wd: f32,
}

struct AdoptTensor {
    live: u32,
    // index into `hypers`
    group: u32,
    first_chunk: u32,
    chunk_count: u32,
    // 1 on the tensor's first step
    first: u32,
    // (t - 1)^clip_exp
    clip: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> hypers: array<AdoptHyper, MAX_SEGMENT_GROUPS>;
@group(0) @binding(3) var<storage, read> tensors: array<AdoptTensor>;
@group(0) @binding(7) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// BEGIN fma_exact (standalone: tests/optim_lion_adopt.rs runs it on its own)
// torch's CPU kernels fuse `grad.add(param, alpha=weight_decay)` into one fma (ATen's
// vectorized add is fmadd). Where g + wd*p nearly cancels, the unfused sum is off by up to an ulp
// of wd*p, a large relative error in g; ADOPT then divides the next step's gradient by that
// g's square root, so the error grows past torch's fp32 tolerance (seen in a timm fixture).
// WGSL's fma() may be split into a multiply and an add (lavapipe does), so the fused result is
// computed here in integer arithmetic: exact for normal a, b, c (round to nearest even,
// subnormal and infinite results included), and the plain a * b + c for zeros, subnormal
// operands, infinities and NaN, whose fma equals it (zeros, inf, NaN) or differs only below
// 2^-126. src/optim/adopt.rs::fma_exact is its twin (f32::mul_add on normal operands).

// 64-bit unsigned integers as vec2<u32>(low word, high word).
fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// a - b for a >= b.
fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}

fn u64_less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// a << n for n < 64.
fn u64_shl(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) {
        return a;
    }
    if (n >= 32u) {
        return vec2<u32>(0u, a.x << (n - 32u));
    }
    return vec2<u32>(a.x << n, (a.y << n) | (a.x >> (32u - n)));
}

// a >> n for n < 64.
fn u64_shr(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) {
        return a;
    }
    if (n >= 32u) {
        return vec2<u32>(a.y >> (n - 32u), 0u);
    }
    return vec2<u32>((a.x >> n) | (a.y << (32u - n)), a.y >> n);
}

// Whether any of the bits below bit n of a is set.
fn u64_any_below(a: vec2<u32>, n: u32) -> bool {
    if (n == 0u) {
        return false;
    }
    if (n >= 64u) {
        return a.x != 0u || a.y != 0u;
    }
    if (n >= 32u) {
        return a.x != 0u || (n > 32u && (a.y << (64u - n)) != 0u);
    }
    return (a.x << (32u - n)) != 0u;
}

// a >> n with every bit shifted out OR-ed into bit 0 ("jamming"): with an even partner, the
// sum or difference then rounds as the exact one would.
fn u64_shr_jam(a: vec2<u32>, n: u32) -> vec2<u32> {
    if (n >= 64u) {
        return vec2<u32>(select(0u, 1u, a.x != 0u || a.y != 0u), 0u);
    }
    var r = u64_shr(a, n);
    if (u64_any_below(a, n)) {
        r.x = r.x | 1u;
    }
    return r;
}

fn u64_clz(a: vec2<u32>) -> u32 {
    if (a.y != 0u) {
        return countLeadingZeros(a.y);
    }
    return 32u + countLeadingZeros(a.x);
}

// The exact product of two 24-bit significands (48 bits), from 12-bit halves.
fn mul24_wide(x: u32, y: u32) -> vec2<u32> {
    let xh = x >> 12u;
    let xl = x & 0xfffu;
    let yh = y >> 12u;
    let yl = y & 0xfffu;
    let hh = xh * yh;
    let mid = xh * yl + xl * yh;
    var r = vec2<u32>(xl * yl, 0u);
    r = u64_add(r, vec2<u32>(mid << 12u, mid >> 20u));
    return u64_add(r, vec2<u32>(hh << 24u, hh >> 8u));
}

// a * b + c, rounded once (see above).
fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let uc = bitcast<u32>(c);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    let ec = (uc >> 23u) & 0xffu;
    if (ea == 0u || ea == 255u || eb == 0u || eb == 255u || ec == 0u || ec == 255u) {
        return a * b + c;
    }
    // |a * b| = pm * 2^pe with pm's top bit at 60 or 61; |c| = cm * 2^ce with cm's at 60. Both
    // have zero low bits (14 and 37), so jamming the smaller one's lost bits is exact.
    let pm = u64_shl(mul24_wide((ua & 0x7fffffu) | 0x800000u, (ub & 0x7fffffu) | 0x800000u), 14u);
    let pe = i32(ea) + i32(eb) - 314;
    let cm = vec2<u32>(0u, ((uc & 0x7fffffu) | 0x800000u) << 5u);
    let ce = i32(ec) - 187;
    let ps = (ua ^ ub) & 0x80000000u;
    let cs = uc & 0x80000000u;
    var x = pm;
    var y = cm;
    var xs = ps;
    var ys = cs;
    var e = pe;
    if (ce > pe) {
        x = cm;
        y = pm;
        xs = cs;
        ys = ps;
        e = ce;
    }
    y = u64_shr_jam(y, u32(abs(pe - ce)));
    var s: vec2<u32>;
    var sign = xs;
    if (xs == ys) {
        s = u64_add(x, y);
    } else if (u64_less(x, y)) {
        s = u64_sub(y, x);
        sign = ys;
    } else {
        s = u64_sub(x, y);
    }
    if (s.x == 0u && s.y == 0u) {
        // Exact cancellation: +0 when rounding to nearest.
        return 0.0;
    }
    let lz = u64_clz(s);
    s = u64_shl(s, lz);
    // |a * b + c| = s * 2^(e - lz) with s's top bit at 63; as a normal f32 its significand is
    // s >> 40 and its biased exponent be. Below the normal range fewer bits are kept.
    let be = e - i32(lz) + 190;
    var shift = 40u;
    if (be < 1) {
        shift = u32(41 - be);
    }
    var kept = 0u;
    if (shift < 64u) {
        kept = u64_shr(s, shift).x;
    }
    // Round to nearest even: the guard bit below the kept ones, then any bit below it.
    var guard = false;
    if (shift <= 64u) {
        guard = (u64_shr(s, shift - 1u).x & 1u) == 1u;
    }
    if (guard && (u64_any_below(s, shift - 1u) || (kept & 1u) == 1u)) {
        kept += 1u;
    }
    if (be < 1) {
        // Subnormal, or rounded up to the smallest normal (kept = 2^23 encodes it).
        return bitcast<f32>(sign | kept);
    }
    var bexp = u32(be);
    if (kept == 0x1000000u) {
        kept = 0x800000u;
        bexp += 1u;
    }
    if (bexp >= 255u) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    return bitcast<f32>(sign | (bexp << 23u) | (kept & 0x7fffffu));
}
// END fma_exact

fn adopt_l2(hp: AdoptHyper) -> bool {
    return hp.weight_decay != 0.0 && (hp.flags & ADOPT_DECOUPLED) == 0u;
}

// The gradient the rule sees: maximize (and clipping) in load_grad, then L2 decay.
fn adopt_grad(i: u32, p: vec4<f32>, hp: AdoptHyper) -> vec4<f32> {
    var g = load_grad(i, hp.flags);
    if (adopt_l2(hp)) {
        let wd = hp.weight_decay;
        g = vec4<f32>(fma_exact(wd, p.x, g.x), fma_exact(wd, p.y, g.y), fma_exact(wd, p.z, g.z), fma_exact(wd, p.w, g.w));
    }
    return g;
}

// The new first moment, from step 2 on.
fn adopt_moment(g: vec4<f32>, m: vec4<f32>, v: vec4<f32>, t: AdoptTensor, hp: AdoptHyper) -> vec4<f32> {
    let s = sqrt(v);
    let eps = vec4<f32>(hp.eps);
    // torch.clamp(sqrt(v), eps), written as a select so that NaN stays NaN.
    var n = g / select(s, eps, s < eps);
    if ((hp.flags & ADOPT_CLIP) != 0u) {
        let c = vec4<f32>(t.clip);
        n = select(n, -c, n < -c);
        n = select(n, c, n > c);
    }
    return lerp_torch(m, n, hp.one_minus_beta1);
}

@compute @workgroup_size(WG_SIZE)
fn adopt_caution_count(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    if (!c.ok) {
        return;
    }
    let t = tensors[c.tensor];
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    if (t.live == 0u || t.first != 0u || (hp.flags & ADOPT_CAUTION) == 0u) {
        return;
    }
    let l2 = adopt_l2(hp);
    // Counts of at most 4096 in f32: exact.
    // Virtual lanes (reduce.wgsl): the sums' order does not depend on the tuned split.
    for (var l = lid; l < chunk_lanes(c.len); l += WG_SIZE) {
        var acc = 0.0;
        for (var k = 0u; k < RED_VEC; k++) {
            let v = k * RED_LANES + l;
            if (v * 4u >= c.len) {
                break;
            }
            let i = c.base + v;
            let si = c.sbase + v;
            var p = vec4<f32>(0.0);
            if (l2) {
                p = params[i];
            }
            let g = adopt_grad(i, p, hp);
            let m = adopt_moment(g, exp_avg[si], exp_avg_sq[si], t, hp);
            acc += count_lanes(m * g > vec4<f32>(0.0), lane_mask(c.len, v));
        }
        set_lane_count(l, acc);
    }
    store_chunk_count(win.chunk_base + group_index(wid, nwg), lid, c.len);
}

@compute @workgroup_size(RED_WG)
fn adopt_caution_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ti = group_index(wid, nwg);
    if (ti >= win.n_tensors) {
        return;
    }
    let t = tensors[ti];
    if (t.live == 0u || t.first != 0u) {
        return;
    }
    let hp = hypers[t.group];
    if ((hp.flags & ADOPT_CAUTION) == 0u) {
        return;
    }
    store_caution_scale(ti, t.first_chunk, t.chunk_count, lid);
}

@compute @workgroup_size(WG_SIZE)
fn adopt_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = chunk_for(wid, nwg);
    // Idle invocations (past the end of a short chunk) leave before the tensor-table load.
    if (!c.ok || lid * 4u >= c.len) {
        return;
    }
    let t = tensors[c.tensor];
    if (t.live == 0u) {
        return;
    }
    // The hyperparameters of the tensor's parameter group, loaded once per workgroup.
    let hp = hypers[c.group];
    let first = t.first != 0u;
    let caution = (hp.flags & ADOPT_CAUTION) != 0u;
    let decay = hp.weight_decay != 0.0 && (hp.flags & ADOPT_DECOUPLED) != 0u;
    var scale = 0.0;
    if (caution && !first) {
        scale = partials[win.tensor_base + c.tensor].x;
    }
    for (var k = 0u; k < VEC_PER_LANE; k++) {
        let v = k * WG_SIZE + lid;
        if (v * 4u >= c.len) {
            break;
        }
        let i = c.base + v;
        let si = c.sbase + v;
        let mask = lane_mask(c.len, v);
        let p0 = params[i];
        let g = adopt_grad(i, p0, hp);
        let v0 = exp_avg_sq[si];
        if (first) {
            // v = g^2 (timm's addcmul_ into the zero state); m and p are left alone.
            exp_avg_sq[si] = select(v0, v0 + g * g, mask);
            continue;
        }
        var p = p0;
        if (decay) {
            p = p + hp.neg_lr_wd * p;
        }
        let m0 = exp_avg[si];
        let m = adopt_moment(g, m0, v0, t, hp);
        exp_avg[si] = select(m0, m, mask);
        var me = m;
        if (caution) {
            me = m * select(vec4<f32>(0.0), vec4<f32>(scale), m * g > vec4<f32>(0.0));
        }
        store_param(i, select(p0, p + hp.neg_lr * me, mask));
        exp_avg_sq[si] = select(v0, v0 * hp.beta2 + (hp.one_minus_beta2 * g) * g, mask);
    }
}

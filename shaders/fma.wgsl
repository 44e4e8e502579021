// fma.wgsl: a * b + c rounded once (fma_exact), in integer arithmetic, for ADOPT's L2 decay.
// Composed before adopt.wgsl: `kernel_source!(reduce "fma.wgsl" + "adopt.wgsl")`.

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

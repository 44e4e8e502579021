// amp.wgsl: the loss-scaling and non-finite-skip decision of one optimizer step, on the GPU, so
// a step with NaN or Inf gradients is skipped without a host round trip (PyTorch's found_inf).
// One invocation, between the gradient-norm passes and the update:
//   inv_scale = 1 / scale in f32. torch's is scale.double().reciprocal().float(): the same value
//               where the division is correctly rounded (lavapipe; WGSL allows 2.5 ulp), since
//               the reciprocal of a 24-bit significand is never within an f64 rounding of an
//               f32 tie it is not on, so rounding through f64 changes nothing
//   found     = by default, max|g| * inv_scale is NaN or infinite (max|g| from an inf-norm
//               reduction over the live gradients, NaN-propagating; x -> x * inv_scale is
//               monotone, so this is "some unscaled gradient is not finite"); with
//               AMP_SCALED_CHECK, max|g| itself is NaN or infinite: torch's
//               _amp_foreach_non_finite_check_and_unscale_, which tests the scaled gradient
//               and so misses a finite one that overflows when unscaled (scale < 1)
//   coef      = inv_scale, times the clip coefficient of the unscaled norm when clipping
//   args      = 0 workgroups for every update dispatch when found and skipping, else their
//               normal counts (the update is recorded with indirect dispatches)
//   then GradScaler's update of the dynamic scale (growth, backoff, growth interval), with
//   torch's rounding: the f32 scale times the f64 factor, rounded to f64 and then to f32
//   (`scale_times`, in integer arithmetic: WGSL has no f64).
// Mirrors src/amp.rs (`decide`).
// Bindings: 0 AmpHyper, 1 guard norm out (out[0].y = max|g|), 2 clip norm out (out[0].y = the
// scaled gradients' norm; a dummy without clipping), 3 normal dispatch args, 4 AmpState,
// 5 coef (bound as the update kernels' aux), 6 indirect dispatch args.

const AMP_SKIP: u32 = 1u;
const AMP_DYNAMIC: u32 = 2u;
const AMP_CLIP: u32 = 4u;
const AMP_SCALED_CHECK: u32 = 8u;

// A positive f64 factor, exactly: mant * 2^exp with mant < 2^53 (lo: bits 0..31, hi: bits
// 32..52), made on the host from the f64's bits (src/amp.rs `ExactFactor`).
struct Factor {
    lo: u32,
    hi: u32,
    exp: i32,
    pad: u32,
}

struct AmpHyper {
    flags: u32,
    n_args: u32,
    growth_interval: u32,
    fixed_scale: f32,
    max_norm: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    growth: Factor,
    backoff: Factor,
}

struct AmpState {
    // The scale the step's gradients carry (the dynamic scale, or the fixed one).
    scale: f32,
    growth_tracker: u32,
    // 1 when the last step found a non-finite gradient.
    found: u32,
    // Steps skipped since the state was created.
    skipped: u32,
}

@group(0) @binding(0) var<uniform> ah: AmpHyper;
@group(0) @binding(1) var<storage, read> guard_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> clip_out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> normal_args: array<u32>;
@group(0) @binding(4) var<storage, read_write> st: AmpState;
@group(0) @binding(5) var<storage, read_write> coef: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> args: array<u32>;

fn not_finite(x: f32) -> bool {
    // Exponent bits all ones: infinity or NaN (a compiler may fold x != x away).
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

fn is_nan_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// The 64-bit product of two u32s as (low word, high word), from 16-bit halves: WGSL has no
// u64, and every partial product and partial sum here fits a u32.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>(
        (p00 & 0xffffu) | (mid << 16u),
        p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u)
    );
}

// Below, a vec3<u32> is a 96-bit integer: x bits 0..31, y bits 32..63, z bits 64..95.

// w >> k for k < 96. Whole words move first: WGSL takes a shift amount modulo 32.
fn shr96(w: vec3<u32>, k: u32) -> vec3<u32> {
    var v = w;
    var s = k;
    if (s >= 64u) {
        v = vec3<u32>(v.z, 0u, 0u);
        s -= 64u;
    } else if (s >= 32u) {
        v = vec3<u32>(v.y, v.z, 0u);
        s -= 32u;
    }
    if (s == 0u) {
        return v;
    }
    return vec3<u32>(
        (v.x >> s) | (v.y << (32u - s)),
        (v.y >> s) | (v.z << (32u - s)),
        v.z >> s
    );
}

// The lowest n bits of a word set, n <= 32.
fn low_mask(n: u32) -> u32 {
    if (n >= 32u) {
        return 0xffffffffu;
    }
    return (1u << n) - 1u;
}

// Whether any of the lowest k bits of w is set (k <= 96).
fn low_bits_set(w: vec3<u32>, k: u32) -> bool {
    let m = (w.x & low_mask(k)) | (w.y & low_mask(max(k, 32u) - 32u))
        | (w.z & low_mask(max(k, 64u) - 64u));
    return m != 0u;
}

// w / 2^k rounded to nearest, ties to even (IEEE's default rounding), for k < 96.
fn round_shr96(w: vec3<u32>, k: u32) -> vec3<u32> {
    if (k == 0u) {
        return w;
    }
    var q = shr96(w, k);
    let half = (shr96(w, k - 1u).x & 1u) != 0u;
    let below_half = low_bits_set(w, k - 1u);
    if (half && (below_half || (q.x & 1u) != 0u)) {
        q.x += 1u;
        if (q.x == 0u) {
            q.y += 1u;
            if (q.y == 0u) {
                q.z += 1u;
            }
        }
    }
    return q;
}

fn bit_len96(w: vec3<u32>) -> u32 {
    if (w.z != 0u) {
        return 96u - countLeadingZeros(w.z);
    }
    if (w.y != 0u) {
        return 64u - countLeadingZeros(w.y);
    }
    return 32u - countLeadingZeros(w.x);
}

// The scale times a GradScaler factor as torch rounds it: `_amp_update_scale_` multiplies the
// f32 scale by the f64 factor in double and stores the product in the f32 scale, so the exact
// product is rounded to f64 and then to f32 (a double rounding, which is not always the f32
// nearest the exact product). WGSL has no f64, so the product is formed exactly in integers
// (24-bit x 53-bit significands: at most 77 bits) and both roundings are done on its bits,
// round-to-nearest-even each. `f` must be positive; s may be anything (a zero, an infinity or a
// NaN comes back as it is, as it does from the f64 product).
fn scale_times(s: f32, f: Factor) -> f32 {
    let b = bitcast<u32>(s);
    let sign = b & 0x80000000u;
    let a = b & 0x7fffffffu;
    if (a == 0u || a >= 0x7f800000u) {
        return s;
    }
    var ms = a & 0x7fffffu;
    var es = -149;
    if ((a >> 23u) != 0u) {
        ms |= 0x800000u;
        es = i32(a >> 23u) - 150;
    }
    // The exact product w * 2^e.
    let x = mul_wide(ms, f.lo);
    let y = mul_wide(ms, f.hi);
    let mid = x.y + y.x;
    let w = vec3<u32>(x.x, mid, y.y + select(0u, 1u, mid < x.y));
    let e = es + f.exp;
    let len = i32(bit_len96(w));
    // The weight of its leading bit is 2^top.
    let top = e + len - 1;
    if (len == 0 || top <= -151) {
        // Below 2^-150: the f64 rounding gives at most 2^-150 (it is monotone and 2^-150 is an
        // f64), which is half the least f32 subnormal and goes to the even neighbour, 0.
        return bitcast<f32>(sign);
    }
    if (top >= 128) {
        // At least 2^128, so is its f64 rounding: beyond f32's largest finite value by more
        // than half an ulp.
        return bitcast<f32>(sign | 0x7f800000u);
    }
    // Rounded to f64: 53 significant bits (2^-150 <= |product| < 2^128 is an f64 normal).
    let sh1 = max(len - 53, 0);
    let w1 = round_shr96(w, u32(sh1));
    let e1 = e + sh1;
    // Then to f32: the last bit kept weighs 2^(top1 - 23), or 2^-149 below the normals.
    let top1 = e1 + i32(bit_len96(w1)) - 1;
    let q = max(top1 - 23, -149);
    var m = w1.x;
    var e2 = e1;
    if (q > e1) {
        // q - e1 <= 54: the kept bits fit a word.
        m = round_shr96(w1, u32(q - e1)).x;
        e2 = q;
    }
    // Here m * 2^e2 is the result, m < 2^25 and e2 >= -149.
    if (m == 0u) {
        return bitcast<f32>(sign);
    }
    if (m >= 0x1000000u) {
        // The rounding carried into a new bit: m is 2^24, so the shift is exact.
        m = m >> 1u;
        e2 += 1;
    }
    // A short exact product (a subnormal scale): normalize down to the subnormal floor.
    let up = min(max(i32(countLeadingZeros(m)) - 8, 0), e2 + 149);
    m = m << u32(up);
    e2 -= up;
    if (m < 0x800000u) {
        // A subnormal (e2 is -149).
        return bitcast<f32>(sign | m);
    }
    let biased = e2 + 150;
    if (biased >= 255) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    return bitcast<f32>(sign | (u32(biased) << 23u) | (m & 0x7fffffu));
}

@compute @workgroup_size(1)
fn amp_decide() {
    var scale = ah.fixed_scale;
    if ((ah.flags & AMP_DYNAMIC) != 0u) {
        scale = st.scale;
    }
    let inv_scale = 1.0 / scale;
    var found = not_finite(guard_out[0].y * inv_scale);
    if ((ah.flags & AMP_SCALED_CHECK) != 0u) {
        found = not_finite(guard_out[0].y);
    }
    var c = inv_scale;
    if ((ah.flags & AMP_CLIP) != 0u) {
        // clip_grad_norm_ on the unscaled gradients: their norm is the scaled norm times
        // inv_scale. NaN-propagating, as torch.clamp(max=1) keeps a NaN.
        let k = ah.max_norm / (clip_out[0].y * inv_scale + 1e-6);
        c = inv_scale * select(min(k, 1.0), k, is_nan_bits(k));
    }
    coef[0] = vec4<f32>(c, 0.0, 0.0, 0.0);
    let skip = found && (ah.flags & AMP_SKIP) != 0u;
    for (var i = 0u; i < ah.n_args; i++) {
        args[i] = select(normal_args[i], 0u, skip);
    }
    st.found = select(0u, 1u, found);
    if (skip) {
        st.skipped = st.skipped + 1u;
    }
    if ((ah.flags & AMP_DYNAMIC) != 0u) {
        // torch._amp_update_scale_.
        if (found) {
            st.scale = scale_times(scale, ah.backoff);
            st.growth_tracker = 0u;
        } else {
            let successful = st.growth_tracker + 1u;
            if (successful == ah.growth_interval) {
                let grown = scale_times(scale, ah.growth);
                // torch keeps the scale when the grown one is not finite.
                if (!not_finite(grown)) {
                    st.scale = grown;
                }
                st.growth_tracker = 0u;
            } else {
                st.growth_tracker = successful;
            }
        }
    }
}

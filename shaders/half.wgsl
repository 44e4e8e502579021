// half.wgsl: f16 and bf16 conversions as integer operations, shared by the mixed-precision
// storage preludes (io_packed16.wgsl, io_native16.wgsl), which follow it. They reproduce the
// `half` crate bit for bit (the CPU reference, src/precision.rs): WGSL leaves the rounding of
// pack2x16float and of f32-to-f16 conversions implementation-defined (and their overflow
// indeterminate), and has no bf16 at all. The formats come from override constants in the
// pipeline key.

// Gradients are bf16 (else f16).
override GRAD_BF16: bool = false;
// The model copy is bf16 (else f16).
override MODEL_BF16: bool = false;

// The 16-bit patterns of a vec4 packed in two u32s, one per lane.
fn split16(w: vec2<u32>) -> vec4<u32> {
    return vec4<u32>(w.x & 0xffffu, w.x >> 16u, w.y & 0xffffu, w.y >> 16u);
}

// Four 16-bit patterns packed back into two u32s.
fn join16(h: vec4<u32>) -> vec2<u32> {
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}

// bf16 to f32: exact, the bf16 bits are the upper half of the f32.
fn bf16_to_f32(h: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(h << vec4<u32>(16u));
}

// f16 to f32: exact, subnormals included (rebuilt as m * 2^-24, a normal f32 product).
fn f16_to_f32(h: vec4<u32>) -> vec4<f32> {
    let sign = (h & vec4<u32>(0x8000u)) << vec4<u32>(16u);
    let e = (h >> vec4<u32>(10u)) & vec4<u32>(0x1fu);
    let m = h & vec4<u32>(0x3ffu);
    let normal = sign | ((e + vec4<u32>(112u)) << vec4<u32>(23u)) | (m << vec4<u32>(13u));
    let special = sign | vec4<u32>(0x7f800000u) | (m << vec4<u32>(13u));
    let sub = sign | bitcast<vec4<u32>>(vec4<f32>(m) * 5.9604645e-8);
    let zero_e = e == vec4<u32>(0u);
    return bitcast<vec4<f32>>(select(select(normal, special, e == vec4<u32>(0x1fu)), sub, zero_e));
}

// Round to nearest even on the bits, as `half` does: add one when the round bit is set and
// either a lower bit or the kept lowest bit is (`(x & rb) != 0 && (x & (3 * rb - 1)) != 0`).
fn round_up(x: vec4<u32>, rb: vec4<u32>) -> vec4<u32> {
    let up = ((x & rb) != vec4<u32>(0u)) & ((x & (vec4<u32>(3u) * rb - vec4<u32>(1u))) != vec4<u32>(0u));
    return select(vec4<u32>(0u), vec4<u32>(1u), up);
}

// f32 to bf16, round to nearest even (half::bf16::from_f32): a carry out of the mantissa
// moves into the exponent, so overflow gives infinity; NaN keeps its sign and top mantissa
// bits, with the quiet bit set.
fn f32_to_bf16(v: vec4<f32>) -> vec4<u32> {
    let x = bitcast<vec4<u32>>(v);
    let nan = (x & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    let rounded = (x >> vec4<u32>(16u)) + round_up(x, vec4<u32>(0x8000u));
    return select(rounded, (x >> vec4<u32>(16u)) | vec4<u32>(0x40u), nan);
}

// f32 to f16, round to nearest even (half::f16::from_f32): overflow to infinity, results
// below the f16 normal range as subnormals (rounded once, from the full f32 mantissa), f32
// subnormals to signed zero, NaN to a quiet NaN with the sign and top mantissa bits.
fn f32_to_f16(v: vec4<f32>) -> vec4<u32> {
    let x = bitcast<vec4<u32>>(v);
    let sign = (x >> vec4<u32>(16u)) & vec4<u32>(0x8000u);
    let exp = (x >> vec4<u32>(23u)) & vec4<u32>(0xffu);
    let man = x & vec4<u32>(0x7fffffu);
    // Infinity or NaN.
    let nan_bit = select(vec4<u32>(0x200u), vec4<u32>(0u), man == vec4<u32>(0u));
    let special = sign | vec4<u32>(0x7c00u) | nan_bit | (man >> vec4<u32>(13u));
    // half_exp = exp - 127 + 15, in 1..=30 for f16 normals.
    let he = bitcast<vec4<i32>>(exp) - vec4<i32>(112);
    let normal_bits = (bitcast<vec4<u32>>(max(he, vec4<i32>(0))) << vec4<u32>(10u)) | (man >> vec4<u32>(13u));
    let normal = (sign | normal_bits) + round_up(man, vec4<u32>(0x1000u));
    // Subnormal results (he <= 0): the implicit bit joins the mantissa, shifted by 14 - he
    // (14..=24 where anything survives; clamped so every lane's shift stays below 32).
    let shift = bitcast<vec4<u32>>(clamp(vec4<i32>(14) - he, vec4<i32>(14), vec4<i32>(24)));
    let full = man | vec4<u32>(0x800000u);
    let sub = sign | ((full >> shift) + round_up(full, vec4<u32>(1u) << (shift - vec4<u32>(1u))));
    let tiny = he < vec4<i32>(-10);
    var r = select(normal, sub, he <= vec4<i32>(0));
    r = select(r, sign, tiny);
    r = select(r, sign | vec4<u32>(0x7c00u), he >= vec4<i32>(31));
    return select(r, special, exp == vec4<u32>(0xffu));
}


// io_native16.wgsl: the storage prelude of an f16 arena on the native path (after
// enable_f16.wgsl, common.wgsl and half.wgsl; the device has SHADER_F16). The gradients are an
// array of vec4<f16>, one per vec4 of master weights, loaded and widened by the hardware. The
// model copy keeps the packed layout of io_packed16.wgsl (the same bytes as a vec4<f16>) and
// half.wgsl's integer rounding: WGSL leaves the rounding of an f32-to-f16 conversion
// implementation-defined and its overflow indeterminate, and naga cannot bitcast u32 to
// vec2<f16>, while the copy must be round-to-nearest-even, overflowing to infinity, and
// bit-equal to the CPU reference.

@group(0) @binding(5) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> grads: array<vec4<f16>>;
@group(0) @binding(11) var<storage, read_write> model: array<vec2<u32>>;

// The i-th vec4 of the gradient, widened to f32 (exact: every f16 is an f32).
fn grad_raw(i: u32) -> vec4<f32> {
    return vec4<f32>(grads[i]);
}

// Writes the i-th vec4 of the f32 master weights and its rounded f16 model copy in the same
// pass. Padding lanes get their old master value (zero), whose copy is zero too.
fn store_param(i: u32, p: vec4<f32>) {
    params[i] = p;
    model[i] = join16(f32_to_f16(p));
}

// io_packed16.wgsl: the storage prelude of a mixed-precision arena on the packed path
// (follows common.wgsl and half.wgsl). `params` (binding 5) holds the f32 master weights; the
// gradients (binding 6) and the model copy (binding 11) are 16-bit, two values per u32,
// element 2k in the low half, so the vec4 of elements i is one vec2<u32> at index i. Works on
// every adapter, and is the only path for bf16.

@group(0) @binding(5) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> grads: array<vec2<u32>>;
@group(0) @binding(11) var<storage, read_write> model: array<vec2<u32>>;

// The i-th vec4 of the gradient, widened to f32 (exactly).
fn grad_raw(i: u32) -> vec4<f32> {
    let h = split16(grads[i]);
    if (GRAD_BF16) {
        return bf16_to_f32(h);
    }
    return f16_to_f32(h);
}

// Writes the i-th vec4 of the f32 master weights and its rounded 16-bit model copy in the
// same pass. Padding lanes get their old master value (zero), whose copy is zero too.
fn store_param(i: u32, p: vec4<f32>) {
    params[i] = p;
    if (MODEL_BF16) {
        model[i] = join16(f32_to_bf16(p));
    } else {
        model[i] = join16(f32_to_f16(p));
    }
}

// io_model16.wgsl: the storage prelude of an arena with a 16-bit model copy over f32
// gradients (follows common.wgsl and half.wgsl): gradients accumulated in f32, the forward
// pass reading 16-bit weights. `params` (5) holds the f32 master weights, `grads` (6) the f32
// gradients as in io_f32.wgsl, and the model copy (11) is packed as in io_packed16.wgsl.

@group(0) @binding(5) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> model: array<vec2<u32>>;

// The i-th vec4 of the gradient, as stored.
fn grad_raw(i: u32) -> vec4<f32> {
    return grads[i];
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

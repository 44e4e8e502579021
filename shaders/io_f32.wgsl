// io_f32.wgsl: the storage prelude of an f32 arena (follows common.wgsl). The twin of
// io_packed16.wgsl: every kernel reads gradients through `load_grad` (common.wgsl, over
// `grad_raw`) and writes parameters through `store_param`, so one kernel file serves both storage modes.

@group(0) @binding(5) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> grads: array<vec4<f32>>;

// The i-th vec4 of the gradient, as stored.
fn grad_raw(i: u32) -> vec4<f32> {
    return grads[i];
}

// Writes the i-th vec4 of the parameters (padding lanes must be given their old value, zero).
fn store_param(i: u32, p: vec4<f32>) {
    params[i] = p;
}

// amp.wgsl: the loss-scaling and non-finite-skip decision of one optimizer step, on the GPU, so
// a step with NaN or Inf gradients is skipped without a host round trip (PyTorch's found_inf).
// One invocation, between the gradient-norm passes and the update:
//   inv_scale = 1 / scale (f32; exact for the power-of-two scales GradScaler produces)
//   found     = max|g| * inv_scale is NaN or infinite (max|g| from an inf-norm reduction over
//               the live gradients, NaN-propagating; x -> x * inv_scale is monotone, so this is
//               "some unscaled gradient is not finite", as torch's check after unscale_)
//   coef      = inv_scale, times the clip coefficient of the unscaled norm when clipping
//   args      = 0 workgroups for every update dispatch when found and skipping, else their
//               normal counts (the update is recorded with indirect dispatches)
//   then GradScaler's update of the dynamic scale (growth, backoff, growth interval).
// Mirrors src/amp.rs (`AmpCpu`).
// Bindings: 0 AmpHyper, 1 guard norm out (out[0].y = max|g|), 2 clip norm out (out[0].y = the
// scaled gradients' norm; a dummy without clipping), 3 normal dispatch args, 4 AmpState,
// 5 coef (bound as the update kernels' aux), 6 indirect dispatch args.

const AMP_SKIP: u32 = 1u;
const AMP_DYNAMIC: u32 = 2u;
const AMP_CLIP: u32 = 4u;

struct AmpHyper {
    flags: u32,
    n_args: u32,
    growth_interval: u32,
    fixed_scale: f32,
    growth_factor: f32,
    backoff_factor: f32,
    max_norm: f32,
    pad: u32,
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

@compute @workgroup_size(1)
fn amp_decide() {
    var scale = ah.fixed_scale;
    if ((ah.flags & AMP_DYNAMIC) != 0u) {
        scale = st.scale;
    }
    let inv_scale = 1.0 / scale;
    let found = not_finite(guard_out[0].y * inv_scale);
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
            st.scale = scale * ah.backoff_factor;
            st.growth_tracker = 0u;
        } else {
            let successful = st.growth_tracker + 1u;
            if (successful == ah.growth_interval) {
                let grown = scale * ah.growth_factor;
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

// adafactor.wgsl: torch.optim.Adafactor (SPEC-2 §2.7). Mirrors AdafactorConfig's Rule::update
// in src/optim/adafactor.rs operation for operation.
//
// One workgroup per tensor runs the whole step:
//   1. ‖p‖² of the pre-decay params (lane sums, then a halving tree)
//   2. factored (≥ 2-D, per matrix of the leading-dim batch): R_i = lerp(R_i, Σ_j g² / C, β̂)
//      with row i summed by one invocation in j order, C_j = lerp(C_j, Σ_i g² / R, β̂) likewise;
//      unfactored: V = lerp(V, g², β̂) elementwise
//   3. per matrix: div = max(mean_i R_i, ε1) (lane sums + tree); u = g / sqrt(max(R_i·C_j / div,
//      ε1²)); ‖u‖² over the tensor (lane sums over every matrix in order, then one tree)
//   4. α = max(ε2, RMS(p))·ρ, den = max(1, RMS(u)/d); p = p·(1 − lr·wd) − (α/den)·u, u recomputed
// Every reduction has a fixed order and no atomics, so the results are deterministic (and equal
// to the CPU twin's on an IEEE f32 device). Frozen and empty tensors (live = 0) are skipped.
//
// Bindings (group 0), mirrored by src/shaders.rs (LayoutKind::Adafactor):
//   0  storage, read       hypers    AdafactorHyper per parameter group of the segment
//   1  uniform             batch     the batch's first row in `tensors` and its tensor count
//   2  storage, read       tensors   AdafactorGpuTensor per tensor of the segment, this step
//   3  storage, read       aux       aux[0]: the gradient-clip / loss-scale coefficient
//   4  storage, read_write params    the batch's window of the params arena
//   5  storage, read       grads     the same window of the grads arena
//   6  storage, read_write state     the batch's window of row_var, col_var and variance
//   7  storage, read_write scratch   unused (the layout's scratch slot)

const ADAFACTOR_WG: u32 = 256u;
const FLAG_MAXIMIZE: u32 = 1u;
const FLAG_GRAD_SCALE: u32 = 2u;

// 32 bytes; Rust twin AdafactorHyper.
struct AdafactorHyper {
    eps1: f32,
    eps1_sq: f32,
    eps2: f32,
    d: f32,
    flags: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// 16 bytes; Rust twin AdafactorBatch.
struct AdafactorBatch {
    first: u32,
    count: u32,
    pad0: u32,
    pad1: u32,
}

// 64 bytes; Rust twin AdafactorGpuTensor (AdafactorTensor's 48 bytes, then the offsets, in
// elements from the start of each binding).
struct AdafactorGpuTensor {
    live: u32,
    group: u32,
    factored: u32,
    n: u32,
    batch: u32,
    rows: u32,
    cols: u32,
    beta_hat: f32,
    rho: f32,
    decay: f32,
    tpad0: u32,
    tpad1: u32,
    p_off: u32,
    r_off: u32,
    c_off: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> hypers: array<AdafactorHyper>;
@group(0) @binding(1) var<uniform> batch: AdafactorBatch;
@group(0) @binding(2) var<storage, read> tensors: array<AdafactorGpuTensor>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(4) var<storage, read_write> params: array<f32>;
@group(0) @binding(5) var<storage, read> grads: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;

var<workgroup> red: array<f32, 256>;

// torch.lerp's CPU formula (as lerp_torch in common.wgsl, on scalars).
fn lerp1(start: f32, end: f32, w: f32) -> f32 {
    if (abs(w) < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

// The gradient as the update sees it: times aux[0] under clipping / loss scaling, negated
// under maximize.
fn grad_at(flags: u32, i: u32) -> f32 {
    var g = grads[i];
    if ((flags & FLAG_GRAD_SCALE) != 0u) {
        g = g * aux[0];
    }
    if ((flags & FLAG_MAXIMIZE) != 0u) {
        g = -g;
    }
    return g;
}

// The halving tree over the invocations' lane sums; every invocation gets the total. Called in
// uniform control flow only.
fn tree_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = ADAFACTOR_WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // Everyone has read the total before `red` is reused.
    workgroupBarrier();
    return total;
}

// max(mean_i R_i, ε1) of matrix m.
fn row_div(t: AdafactorGpuTensor, h: AdafactorHyper, m: u32, li: u32) -> f32 {
    var acc = 0.0;
    for (var i = li; i < t.rows; i = i + ADAFACTOR_WG) {
        acc = acc + state[t.r_off + m * t.rows + i];
    }
    return max(tree_sum(li, acc) / f32(t.rows), h.eps1);
}

// u of element e of matrix m (factored).
fn u_factored(t: AdafactorGpuTensor, h: AdafactorHyper, m: u32, div: f32, e: u32) -> f32 {
    let i = e / t.cols;
    let j = e % t.cols;
    let v = state[t.r_off + m * t.rows + i] * state[t.c_off + m * t.cols + j] / div;
    let g = grad_at(h.flags, t.p_off + m * t.rows * t.cols + e);
    return g * (1.0 / sqrt(max(v, h.eps1_sq)));
}

fn tensor_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(256)
fn adafactor_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let k = tensor_of(wid, nwg);
    if (k >= batch.count) {
        return;
    }
    let t = tensors[batch.first + k];
    if (t.live == 0u) {
        return;
    }
    let h = hypers[t.group];
    let n = t.n;

    // 1. ‖p‖² before the decay.
    var acc = 0.0;
    for (var e = li; e < n; e = e + ADAFACTOR_WG) {
        let x = params[t.p_off + e];
        acc = acc + x * x;
    }
    let pn2 = tree_sum(li, acc);

    // 2. Second-moment statistics.
    let rows = t.rows;
    let cols = t.cols;
    if (t.factored != 0u) {
        for (var m = 0u; m < t.batch; m = m + 1u) {
            let base = t.p_off + m * rows * cols;
            for (var i = li; i < rows; i = i + ADAFACTOR_WG) {
                var s = 0.0;
                for (var j = 0u; j < cols; j = j + 1u) {
                    let g = grad_at(h.flags, base + i * cols + j);
                    s = s + g * g;
                }
                let r = t.r_off + m * rows + i;
                state[r] = lerp1(state[r], s / f32(cols), t.beta_hat);
            }
            for (var j = li; j < cols; j = j + ADAFACTOR_WG) {
                var s = 0.0;
                for (var i = 0u; i < rows; i = i + 1u) {
                    let g = grad_at(h.flags, base + i * cols + j);
                    s = s + g * g;
                }
                let c = t.c_off + m * cols + j;
                state[c] = lerp1(state[c], s / f32(rows), t.beta_hat);
            }
        }
    } else {
        for (var e = li; e < n; e = e + ADAFACTOR_WG) {
            let g = grad_at(h.flags, t.p_off + e);
            state[t.r_off + e] = lerp1(state[t.r_off + e], g * g, t.beta_hat);
        }
    }
    // Row i and column j were written by other invocations than those that read them next.
    storageBarrier();
    workgroupBarrier();

    // 3. ‖u‖².
    var uacc = 0.0;
    if (t.factored != 0u) {
        for (var m = 0u; m < t.batch; m = m + 1u) {
            let div = row_div(t, h, m, li);
            for (var e = li; e < rows * cols; e = e + ADAFACTOR_WG) {
                let u = u_factored(t, h, m, div, e);
                uacc = uacc + u * u;
            }
        }
    } else {
        for (var e = li; e < n; e = e + ADAFACTOR_WG) {
            let g = grad_at(h.flags, t.p_off + e);
            let u = g * (1.0 / sqrt(max(state[t.r_off + e], h.eps1_sq)));
            uacc = uacc + u * u;
        }
    }
    let un2 = tree_sum(li, uacc);

    // 4. The update (u recomputed, the same operations as in 3).
    let sn = sqrt(f32(n));
    let alpha = max(h.eps2, sqrt(pn2) / sn) * t.rho;
    let den = max(sqrt(un2) / (sn * h.d), 1.0);
    let step = alpha / den;
    if (t.factored != 0u) {
        for (var m = 0u; m < t.batch; m = m + 1u) {
            let div = row_div(t, h, m, li);
            for (var e = li; e < rows * cols; e = e + ADAFACTOR_WG) {
                let q = t.p_off + m * rows * cols + e;
                params[q] = params[q] * t.decay - step * u_factored(t, h, m, div, e);
            }
        }
    } else {
        for (var e = li; e < n; e = e + ADAFACTOR_WG) {
            let g = grad_at(h.flags, t.p_off + e);
            let u = g * (1.0 / sqrt(max(state[t.r_off + e], h.eps1_sq)));
            let q = t.p_off + e;
            params[q] = params[q] * t.decay - step * u;
        }
    }
}

// muon.wgsl: the elementwise ends of torch.optim.Muon (SPEC-2 §2.8). Mirrors MuonConfig's
// Rule::update in src/optim/muon.rs; the Newton–Schulz iteration in between runs on the batched
// matmul (matmul.wgsl), three stages per iteration over every matrix of a batch.
//
// A step of one batch of matrices:
//   muon_momentum  one workgroup per matrix: B = lerp(B, g, 1-μ); U = nesterov ? lerp(g, B, μ)
//                  : B; X0 = U; then ‖U‖_F by a fixed tree (each invocation sums the squares of
//                  its strided elements in order, then a halving tree over the 256 partial
//                  sums: deterministic, no atomics); then X0 = U / max(‖U‖, eps)
//   (NS stages)    A = X·Xᵀ (XᵀX for tall matrices), Q = c·A·A + b·A, X' = Q·X + a·X (X·Q + a·X)
//   muon_apply     one workgroup per matrix: p = p·(1 - lr·wd); p = p + (-lr_adj)·X_final
// Frozen matrices (live = 0) are skipped by both kernels; the NS stages still run over their
// stale scratch, whose result is never applied.
//
// Bindings (group 0), mirrored by src/shaders.rs (LayoutKind::Muon):
//   0  storage, read       hypers    MuonHyper per parameter group of the segment
//   1  uniform             batch     the batch's first row in `tensors` and its matrix count
//   2  storage, read       tensors   MuonGpuTensor per matrix of the segment, this step
//   3  storage, read       aux       aux[0]: the gradient-clip coefficient
//   4  storage, read_write params    the batch's window of the params arena
//   5  storage, read       grads     the same window of the grads arena
//   6  storage, read_write bufs      the batch's window of the momentum buffers
//   7  storage, read_write scratch   the batch's Newton–Schulz scratch (X0, X1, A, Q per matrix)

const MUON_WG: u32 = 256u;
const FLAG_GRAD_SCALE: u32 = 2u;
const MUON_NESTEROV: u32 = 256u;

// 32 bytes; Rust twin MuonHyper.
struct MuonHyper {
    momentum: f32,
    one_minus_momentum: f32,
    eps: f32,
    flags: u32,
    a: f32,
    b: f32,
    c: f32,
    ns_steps: u32,
}

// 16 bytes; Rust twin MuonBatch.
struct MuonBatch {
    first: u32,
    count: u32,
    pad0: u32,
    pad1: u32,
}

// 48 bytes; Rust twin MuonGpuTensor (MuonTensor's 32 bytes, then the offsets). Offsets are elements from the start of each binding.
struct MuonGpuTensor {
    live: u32,
    group: u32,
    rows: u32,
    cols: u32,
    decay: f32,
    neg_lr_adj: f32,
    tpad0: u32,
    tpad1: u32,
    p_off: u32,
    b_off: u32,
    x0_off: u32,
    xf_off: u32,
}

@group(0) @binding(0) var<storage, read> hypers: array<MuonHyper>;
@group(0) @binding(1) var<uniform> batch: MuonBatch;
@group(0) @binding(2) var<storage, read> tensors: array<MuonGpuTensor>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(4) var<storage, read_write> params: array<f32>;
@group(0) @binding(5) var<storage, read> grads: array<f32>;
@group(0) @binding(6) var<storage, read_write> bufs: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;

var<workgroup> red: array<f32, 256>;

// torch.lerp's CPU formula (as lerp_torch in common.wgsl, on scalars).
fn lerp1(start: f32, end: f32, w: f32) -> f32 {
    if (abs(w) < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

// The batch's matrix for this workgroup (grids past 65535 spill into y).
fn matrix_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

@compute @workgroup_size(256)
fn muon_momentum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = matrix_of(wid, nwg);
    if (m >= batch.count) {
        return;
    }
    let t = tensors[batch.first + m];
    if (t.live == 0u) {
        return;
    }
    let h = hypers[t.group];
    let n = t.rows * t.cols;
    let nesterov = (h.flags & MUON_NESTEROV) != 0u;
    var acc = 0.0;
    for (var e = li; e < n; e = e + MUON_WG) {
        var g = grads[t.p_off + e];
        if ((h.flags & FLAG_GRAD_SCALE) != 0u) {
            g = g * aux[0];
        }
        let b = lerp1(bufs[t.b_off + e], g, h.one_minus_momentum);
        bufs[t.b_off + e] = b;
        var u = b;
        if (nesterov) {
            u = lerp1(g, b, h.momentum);
        }
        scratch[t.x0_off + e] = u;
        acc = acc + u * u;
    }
    red[li] = acc;
    workgroupBarrier();
    for (var s = MUON_WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let denom = max(sqrt(red[0]), h.eps);
    // Each invocation rescales the elements it wrote itself: no other invocation's writes
    // are read, so no storage barrier is needed.
    for (var e = li; e < n; e = e + MUON_WG) {
        scratch[t.x0_off + e] = scratch[t.x0_off + e] / denom;
    }
}

@compute @workgroup_size(256)
fn muon_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = matrix_of(wid, nwg);
    if (m >= batch.count) {
        return;
    }
    let t = tensors[batch.first + m];
    if (t.live == 0u) {
        return;
    }
    let n = t.rows * t.cols;
    for (var e = li; e < n; e = e + MUON_WG) {
        let p = params[t.p_off + e] * t.decay;
        params[t.p_off + e] = p + t.neg_lr_adj * scratch[t.xf_off + e];
    }
}

// MLP kernels for examples/train_digits.rs (mirrored on the host by examples/train_digits/mlp.rs).
//
// A mini-batch of up to CAPACITY rows goes through: `gather` (batch rows of the resident data set
// into the work buffer), `linear_forward` per layer (y = W x + b, ReLU on hidden layers),
// `softmax_xent` (mean cross-entropy, its gradient with respect to the logits, the loss sum and
// the correct count added to an accumulator slot), then `linear_backward_input` (the delta of the
// layer's input, ReLU mask included) and `linear_backward_params` (weight and bias gradients,
// written, not accumulated, into the optimizer arena's grads buffer).
//
// Parameters and gradients are the arena's whole params and grads buffers, indexed by element
// offsets from the `Model` uniform: arena tensors start on 16-byte boundaries, which need not be
// a multiple of the device's min_storage_buffer_offset_alignment, so they are not bound at
// tensor offsets. Layout of a layer's weight: row-major [out, in] (PyTorch's nn.Linear).
//
// The layer a kernel works on is the pipeline constant LAYER; the batch (first row in `order`,
// row count, accumulator slot) is a uniform bound with a dynamic offset, one entry per batch,
// written once before training. No kernel uses atomics, so every result is deterministic.

struct Layer {
    in_dim: u32,
    out_dim: u32,
    // Element offsets in the arena's params / grads buffers.
    w_off: u32,
    b_off: u32,
    // Element offsets in `work`: input activations, output activations, delta of the input,
    // delta of the output (all row-major [rows, dim]).
    x_off: u32,
    y_off: u32,
    dx_off: u32,
    dy_off: u32,
    // 1: ReLU on the output (forward); 1: the input is a ReLU output (backward mask).
    relu_out: u32,
    relu_in: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Model {
    layers: array<Layer, 2>,
}

struct Batch {
    // First row of the batch in `order`, rows in it (<= CAPACITY), accumulator slot.
    start: u32,
    rows: u32,
    slot: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> model: Model;
@group(0) @binding(1) var<uniform> batch: Batch;
// Pixels of every sample, [samples, in_dim of layer 0], scaled to 0..1.
@group(0) @binding(2) var<storage, read> pixels: array<f32>;
// Label of every sample.
@group(0) @binding(3) var<storage, read> labels: array<u32>;
// Sample indices: the (shuffled) training order, then the test samples.
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read> params: array<f32>;
@group(0) @binding(6) var<storage, read_write> grads: array<f32>;
// Activations and deltas of one batch (offsets in `Layer`).
@group(0) @binding(7) var<storage, read_write> work: array<f32>;
// Per slot: loss sum, correct count, sample count, unused.
@group(0) @binding(8) var<storage, read_write> acc: array<f32>;

override LAYER: u32 = 0u;

const WG: u32 = 64u;
const LOSS_WG: u32 = 256u;
// At most this many classes (logits per row kept in registers by softmax_xent).
const MAX_CLASSES: u32 = 16u;

// x0[b, c] = pixels[order[start + b], c].
@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = model.layers[0];
    let i = gid.x;
    if i >= batch.rows * l.in_dim {
        return;
    }
    let b = i / l.in_dim;
    let c = i % l.in_dim;
    let sample = order[batch.start + b];
    work[l.x_off + i] = pixels[sample * l.in_dim + c];
}

// y[b, o] = act(b[o] + sum_k W[o, k] x[b, k]).
@compute @workgroup_size(WG)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = model.layers[LAYER];
    let i = gid.x;
    if i >= batch.rows * l.out_dim {
        return;
    }
    let b = i / l.out_dim;
    let o = i % l.out_dim;
    let w = l.w_off + o * l.in_dim;
    let x = l.x_off + b * l.in_dim;
    var s = 0.0;
    for (var k = 0u; k < l.in_dim; k++) {
        s += params[w + k] * work[x + k];
    }
    s += params[l.b_off + o];
    if l.relu_out != 0u {
        s = max(s, 0.0);
    }
    work[l.y_off + i] = s;
}

var<workgroup> red_loss: array<f32, LOSS_WG>;
var<workgroup> red_hit: array<f32, LOSS_WG>;

// One workgroup: for each row, log-softmax of the logits of layer 1, loss = logsumexp - z[label],
// d logits = (softmax - onehot) / rows (the gradient of the batch mean), and the prediction
// (first maximum); then the loss sum, correct count and row count are added to slot
// `batch.slot` of `acc`.
@compute @workgroup_size(LOSS_WG)
fn softmax_xent(@builtin(local_invocation_index) t: u32) {
    let l = model.layers[1];
    let classes = min(l.out_dim, MAX_CLASSES);
    let inv_rows = 1.0 / f32(max(batch.rows, 1u));
    var loss = 0.0;
    var hit = 0.0;
    for (var b = t; b < batch.rows; b += LOSS_WG) {
        var z: array<f32, MAX_CLASSES>;
        let base = l.y_off + b * l.out_dim;
        var m = work[base];
        var arg = 0u;
        for (var k = 0u; k < classes; k++) {
            z[k] = work[base + k];
            if z[k] > m {
                m = z[k];
                arg = k;
            }
        }
        var sum = 0.0;
        for (var k = 0u; k < classes; k++) {
            z[k] = exp(z[k] - m);
            sum += z[k];
        }
        let label = labels[order[batch.start + b]];
        loss += m + log(sum) - work[base + label];
        if arg == label {
            hit += 1.0;
        }
        let d = l.dy_off + b * l.out_dim;
        for (var k = 0u; k < classes; k++) {
            let onehot = select(0.0, 1.0, k == label);
            work[d + k] = (z[k] / sum - onehot) * inv_rows;
        }
    }
    red_loss[t] = loss;
    red_hit[t] = hit;
    workgroupBarrier();
    for (var s = LOSS_WG / 2u; s > 0u; s /= 2u) {
        if t < s {
            red_loss[t] += red_loss[t + s];
            red_hit[t] += red_hit[t + s];
        }
        workgroupBarrier();
    }
    if t == 0u {
        let a = batch.slot * 4u;
        acc[a] += red_loss[0];
        acc[a + 1u] += red_hit[0];
        acc[a + 2u] += f32(batch.rows);
    }
}

// dx[b, k] = sum_o W[o, k] dy[b, o], times ReLU'(x[b, k]) when the input is a ReLU output
// (0 where x == 0, as PyTorch).
@compute @workgroup_size(WG)
fn linear_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = model.layers[LAYER];
    let i = gid.x;
    if i >= batch.rows * l.in_dim {
        return;
    }
    if l.relu_in != 0u && work[l.x_off + i] <= 0.0 {
        work[l.dx_off + i] = 0.0;
        return;
    }
    let b = i / l.in_dim;
    let k = i % l.in_dim;
    let dy = l.dy_off + b * l.out_dim;
    var s = 0.0;
    for (var o = 0u; o < l.out_dim; o++) {
        s += params[l.w_off + o * l.in_dim + k] * work[dy + o];
    }
    work[l.dx_off + i] = s;
}

// dW[o, k] = sum_b dy[b, o] x[b, k] and db[o] = sum_b dy[b, o], into the grads buffer
// (invocations 0 .. out*in are the weight, the next `out` the bias).
@compute @workgroup_size(WG)
fn linear_backward_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = model.layers[LAYER];
    let i = gid.x;
    let nw = l.out_dim * l.in_dim;
    if i < nw {
        let o = i / l.in_dim;
        let k = i % l.in_dim;
        var s = 0.0;
        for (var b = 0u; b < batch.rows; b++) {
            s += work[l.dy_off + b * l.out_dim + o] * work[l.x_off + b * l.in_dim + k];
        }
        grads[l.w_off + i] = s;
    } else if i < nw + l.out_dim {
        let o = i - nw;
        var s = 0.0;
        for (var b = 0u; b < batch.rows; b++) {
            s += work[l.dy_off + b * l.out_dim + o];
        }
        grads[l.b_off + o] = s;
    }
}

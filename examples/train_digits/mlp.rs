//! A 64-128-10 multilayer perceptron (ReLU, softmax cross-entropy) whose forward pass, loss,
//! backward pass and accuracy count run on the GPU (`mlp.wgsl`), with its parameters and
//! gradients in a [`wgpu_optim::ParamArena`], so that an optimizer step can follow the backward
//! pass in the same command encoder. Shared by `examples/train_digits.rs` and
//! `tests/mlp_gradients.rs` (which includes this file with `#[path]`); it depends only on the
//! library, wgpu, bytemuck, pollster, fastrand and anyhow.
//!
//! Everything is created by [`Mlp::new`]: the data set lives on the GPU, each batch's
//! description is an entry of a uniform table bound with a dynamic offset (written once), and
//! the loss and accuracy sums stay in a GPU buffer until [`Mlp::encode_snapshot`] copies them to
//! a reusable staging buffer. Recording a training batch allocates nothing but the caller's
//! command encoder.

use anyhow::{bail, ensure, Context, Result};
use bytemuck::{Pod, Zeroable};
use wgpu_optim::{GpuContext, ParamArena, TensorSpec};

/// Pixels per image (8x8).
pub const INPUTS: usize = 64;
/// Hidden units.
pub const HIDDEN: usize = 128;
/// Classes (digits 0-9).
pub const CLASSES: usize = 10;
/// Largest mini-batch the kernels take (the loss kernel is one workgroup of this many
/// invocations, one row each).
pub const MAX_BATCH: usize = 256;
/// Accumulator slot of training batches.
pub const TRAIN_SLOT: usize = 0;
/// Accumulator slot of evaluation batches.
pub const TEST_SLOT: usize = 1;

/// The kernels (see the file's header for what each entry point does).
pub const SHADER: &str = include_str!("mlp.wgsl");

/// The 8x8 digits, 1797 rows of 65 bytes: 64 pixels (row-major, 0..16) then the label (0..9).
/// See examples/data/README.md for the source and licence.
pub const DIGITS_U8: &[u8] = include_bytes!("../data/digits.u8");

const ROW_BYTES: usize = INPUTS + 1;
const WG: u32 = 64;

/// Images and labels, pixels scaled to 0..1.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `[samples, INPUTS]`, row-major.
    pub pixels: Vec<f32>,
    /// One label per sample, `< CLASSES`.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// The 1797 handwritten digits of [`DIGITS_U8`], checked (row size, pixel range, labels).
    pub fn digits() -> Result<Self> {
        Self::from_u8(DIGITS_U8)
    }

    /// Parses rows of 64 pixel bytes (0..16) and a label byte (0..9).
    pub fn from_u8(bytes: &[u8]) -> Result<Self> {
        ensure!(
            !bytes.is_empty() && bytes.len() % ROW_BYTES == 0,
            "digits data: {} bytes is not a whole number of {ROW_BYTES}-byte rows",
            bytes.len()
        );
        let mut pixels = Vec::with_capacity(bytes.len() / ROW_BYTES * INPUTS);
        let mut labels = Vec::with_capacity(bytes.len() / ROW_BYTES);
        for (r, row) in bytes.chunks(ROW_BYTES).enumerate() {
            let (px, label) = row.split_at(INPUTS);
            if let Some(&v) = px.iter().find(|&&v| v > 16) {
                bail!("digits data: row {r} has pixel value {v} > 16");
            }
            ensure!(
                (label[0] as usize) < CLASSES,
                "digits data: row {r} has label {}",
                label[0]
            );
            pixels.extend(px.iter().map(|&v| v as f32 / 16.0));
            labels.push(label[0] as u32);
        }
        Ok(Self { pixels, labels })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Samples per class.
    pub fn class_counts(&self, indices: impl IntoIterator<Item = u32>) -> [usize; CLASSES] {
        let mut out = [0; CLASSES];
        for i in indices {
            out[self.labels[i as usize] as usize] += 1;
        }
        out
    }
}

/// A fixed, stratified split: a seeded shuffle of the samples, the first `test_per_class` of
/// each class to the test set and the rest, in shuffled order, to the training set.
pub fn split(data: &Dataset, test_per_class: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut idx: Vec<u32> = (0..data.len() as u32).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut idx);
    let mut taken = [0usize; CLASSES];
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for i in idx {
        let c = data.labels[i as usize] as usize;
        if taken[c] < test_per_class {
            taken[c] += 1;
            test.push(i);
        } else {
            train.push(i);
        }
    }
    (train, test)
}

/// The arena tensors: weights `[out, in]` in group 0, biases in group 1 (so an optimizer can
/// leave them out of weight decay and of LARS/LAMB trust ratios).
pub fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::shaped("fc1.weight", &[HIDDEN, INPUTS]),
        TensorSpec::shaped("fc1.bias", &[HIDDEN]).in_group(1),
        TensorSpec::shaped("fc2.weight", &[CLASSES, HIDDEN]),
        TensorSpec::shaped("fc2.bias", &[CLASSES]).in_group(1),
    ]
}

/// Host copy of the parameters (row-major, as in the arena).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `[HIDDEN, INPUTS]`.
    pub w1: Vec<f32>,
    /// `[HIDDEN]`.
    pub b1: Vec<f32>,
    /// `[CLASSES, HIDDEN]`.
    pub w2: Vec<f32>,
    /// `[CLASSES]`.
    pub b2: Vec<f32>,
}

impl Params {
    /// PyTorch's `nn.Linear` default: weights and biases uniform in `±1/sqrt(fan_in)`, seeded.
    pub fn init(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut u = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * bound).collect()
        };
        Self {
            w1: u(HIDDEN * INPUTS, INPUTS),
            b1: u(HIDDEN, INPUTS),
            w2: u(CLASSES * HIDDEN, HIDDEN),
            b2: u(CLASSES, HIDDEN),
        }
    }

    /// Uploads into the arena (tensor order of [`specs`]).
    pub fn write(&self, arena: &ParamArena) -> Result<()> {
        arena.write_all_params(&[&self.w1, &self.b1, &self.w2, &self.b2])?;
        Ok(())
    }

    /// The four tensors concatenated in arena order, as f64 (for [`cpu_forward`]).
    pub fn to_f64(&self) -> Vec<f64> {
        [&self.w1, &self.b1, &self.w2, &self.b2]
            .into_iter()
            .flatten()
            .map(|&v| v as f64)
            .collect()
    }

    /// Reads the arena's params (or, with `grads`, its gradients) in this shape.
    pub fn read(arena: &ParamArena, grads: bool) -> Result<Self> {
        let mut t = if grads {
            arena.read_all_grads()?
        } else {
            arena.read_all_params()?
        };
        ensure!(
            t.len() == 4,
            "the arena is not the MLP's ({} tensors)",
            t.len()
        );
        let b2 = t.pop().unwrap_or_default();
        let w2 = t.pop().unwrap_or_default();
        let b1 = t.pop().unwrap_or_default();
        let w1 = t.pop().unwrap_or_default();
        Ok(Self { w1, b1, w2, b2 })
    }
}

/// Loss and accuracy sums of one accumulator slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Acc {
    /// Sum over samples of the cross-entropy.
    pub loss_sum: f64,
    /// Correctly classified samples.
    pub correct: f64,
    /// Samples.
    pub count: f64,
}

impl Acc {
    /// Mean cross-entropy (NaN before any sample).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count
    }

    /// Fraction classified correctly (NaN before any sample).
    pub fn accuracy(&self) -> f64 {
        self.correct / self.count
    }
}

/// Mirrors `Layer` in mlp.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct LayerU {
    in_dim: u32,
    out_dim: u32,
    w_off: u32,
    b_off: u32,
    x_off: u32,
    y_off: u32,
    dx_off: u32,
    dy_off: u32,
    relu_out: u32,
    relu_in: u32,
    _pad: [u32; 2],
}

/// Mirrors `Batch` in mlp.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct BatchU {
    start: u32,
    rows: u32,
    slot: u32,
    _pad: u32,
}

/// One mini-batch: its entry in the batch table and its row count.
#[derive(Debug, Clone, Copy)]
struct BatchRef {
    offset: u32,
    rows: u32,
}

#[derive(Debug)]
struct Pipelines {
    gather: wgpu::ComputePipeline,
    forward: [wgpu::ComputePipeline; 2],
    xent: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    backward_params: [wgpu::ComputePipeline; 2],
}

/// The GPU side of the MLP for one arena, one data set and one train/test split.
#[derive(Debug)]
pub struct Mlp {
    ctx: GpuContext,
    pipelines: Pipelines,
    bind_group: wgpu::BindGroup,
    order: wgpu::Buffer,
    acc: wgpu::Buffer,
    staging: wgpu::Buffer,
    train: Vec<BatchRef>,
    eval: Vec<BatchRef>,
    n_train: usize,
    layers: [LayerU; 2],
}

fn groups(n: usize) -> u32 {
    (n as u32).div_ceil(WG)
}

impl Mlp {
    /// Uploads `data`, lays out batches of at most `batch` rows over `train` (in the order of
    /// the last [`Mlp::set_train_order`], initially as given) and over `test`, and creates
    /// every buffer, pipeline and bind group. `arena` must hold [`specs`].
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        data: &Dataset,
        train: &[u32],
        test: &[u32],
        batch: usize,
    ) -> Result<Self> {
        ensure!(
            (1..=MAX_BATCH).contains(&batch),
            "batch size {batch} is not in 1..={MAX_BATCH}"
        );
        ensure!(!train.is_empty(), "no training samples");
        ensure!(
            data.pixels.len() == data.len() * INPUTS,
            "dataset: {} pixels for {} samples",
            data.pixels.len(),
            data.len()
        );
        if let Some(&i) = train
            .iter()
            .chain(test)
            .find(|&&i| i as usize >= data.len())
        {
            bail!("sample index {i} out of range ({} samples)", data.len());
        }
        let names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];
        let mut off = [0u32; 4];
        for (o, (name, spec)) in off.iter_mut().zip(names.iter().zip(specs())) {
            let t = arena
                .tensor(name)
                .context("the arena must hold mlp::specs()")?;
            ensure!(
                t.len == spec.len,
                "{name}: {} elements, want {}",
                t.len,
                spec.len
            );
            *o = u32::try_from(t.offset)?;
        }

        // Work buffer: x0 [B, IN] | h1 [B, HIDDEN] | logits [B, CLASSES] | d logits | d h1.
        let b = batch as u32;
        let (i, h, c) = (INPUTS as u32, HIDDEN as u32, CLASSES as u32);
        let x0 = 0;
        let h1 = x0 + b * i;
        let logits = h1 + b * h;
        let dlogits = logits + b * c;
        let dh1 = dlogits + b * c;
        let work_len = dh1 + b * h;
        let layers = [
            LayerU {
                in_dim: i,
                out_dim: h,
                w_off: off[0],
                b_off: off[1],
                x_off: x0,
                y_off: h1,
                dx_off: 0, // unused: the input is data
                dy_off: dh1,
                relu_out: 1,
                relu_in: 0,
                _pad: [0; 2],
            },
            LayerU {
                in_dim: h,
                out_dim: c,
                w_off: off[2],
                b_off: off[3],
                x_off: h1,
                y_off: logits,
                dx_off: dh1,
                dy_off: dlogits,
                relu_out: 0,
                relu_in: 1,
                _pad: [0; 2],
            },
        ];

        // Batch table: training batches, then evaluation batches, one aligned entry each.
        let stride = (std::mem::size_of::<BatchU>() as u32)
            .next_multiple_of(ctx.limits().min_uniform_buffer_offset_alignment);
        let mut table: Vec<u8> = Vec::new();
        let mut add = |start: usize, rows: usize, slot: usize| -> BatchRef {
            let offset = table.len() as u32;
            let entry = BatchU {
                start: start as u32,
                rows: rows as u32,
                slot: slot as u32,
                _pad: 0,
            };
            table.extend_from_slice(bytemuck::bytes_of(&entry));
            table.resize((offset + stride) as usize, 0);
            BatchRef {
                offset,
                rows: rows as u32,
            }
        };
        let batches =
            |n: usize| (0..n.div_ceil(batch)).map(move |k| (k * batch, batch.min(n - k * batch)));
        let train_refs: Vec<BatchRef> = batches(train.len())
            .map(|(s, r)| add(s, r, TRAIN_SLOT))
            .collect();
        let eval_refs: Vec<BatchRef> = batches(test.len())
            .map(|(s, r)| add(train.len() + s, r, TEST_SLOT))
            .collect();

        let device = ctx.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let storage = |label: &str, contents: &[u8], extra: wgpu::BufferUsages| {
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (contents.len() as u64).max(16),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
                mapped_at_creation: false,
            });
            ctx.queue().write_buffer(&buf, 0, contents);
            buf
        };
        let none = wgpu::BufferUsages::empty();
        let pixels = storage("mlp pixels", bytemuck::cast_slice(&data.pixels), none);
        let labels = storage("mlp labels", bytemuck::cast_slice(&data.labels), none);
        let order_data: Vec<u32> = train.iter().chain(test).copied().collect();
        let order = storage("mlp order", bytemuck::cast_slice(&order_data), none);
        let work = storage(
            "mlp work",
            bytemuck::cast_slice(&vec![0f32; work_len as usize]),
            none,
        );
        let acc = storage("mlp accumulators", &[0u8; 32], wgpu::BufferUsages::COPY_SRC);
        let uniform = |label: &str, contents: &[u8]| {
            let buf = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: contents.len() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue().write_buffer(&buf, 0, contents);
            buf
        };
        let model = uniform("mlp model", bytemuck::cast_slice(&layers));
        let batch_table = uniform("mlp batches", &table);
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("mlp accumulator staging"),
            size: 32,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let entry = |binding, ty, dynamic: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: dynamic,
                min_binding_size: None,
            },
            count: None,
        };
        let read = wgpu::BufferBindingType::Storage { read_only: true };
        let rw = wgpu::BufferBindingType::Storage { read_only: false };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mlp"),
            entries: &[
                entry(0, wgpu::BufferBindingType::Uniform, false),
                entry(1, wgpu::BufferBindingType::Uniform, true),
                entry(2, read, false),
                entry(3, read, false),
                entry(4, read, false),
                entry(5, read, false),
                entry(6, rw, false),
                entry(7, rw, false),
                entry(8, rw, false),
            ],
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("mlp"),
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: model.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &batch_table,
                        offset: 0,
                        size: std::num::NonZeroU64::new(std::mem::size_of::<BatchU>() as u64),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: pixels.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: labels.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: order.as_entire_binding(),
                },
                // The whole params and grads buffers (see mlp.wgsl on offsets).
                wgpu::BindGroupEntry {
                    binding: 5,
                    resource: arena.params_buffer().as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 6,
                    resource: arena.grads_buffer().as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 7,
                    resource: work.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 8,
                    resource: acc.as_entire_binding(),
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mlp"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mlp.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline = |entry: &str, layer: f64| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("LAYER", layer)],
                    ..Default::default()
                },
                cache: None,
            })
        };
        let pipelines = Pipelines {
            gather: pipeline("gather", 0.0),
            forward: [
                pipeline("linear_forward", 0.0),
                pipeline("linear_forward", 1.0),
            ],
            xent: pipeline("softmax_xent", 1.0),
            backward_input: pipeline("linear_backward_input", 1.0),
            backward_params: [
                pipeline("linear_backward_params", 0.0),
                pipeline("linear_backward_params", 1.0),
            ],
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("creating the MLP's GPU objects: {e}");
        }
        Ok(Self {
            ctx: ctx.clone(),
            pipelines,
            bind_group,
            order,
            acc,
            staging,
            train: train_refs,
            eval: eval_refs,
            n_train: train.len(),
            layers,
        })
    }

    /// Training batches per epoch.
    pub fn train_batches(&self) -> usize {
        self.train.len()
    }

    /// Replaces the training order (a permutation of the training indices, e.g. a new shuffle
    /// each epoch). Written with `queue.write_buffer`: it takes effect at the next submission.
    pub fn set_train_order(&self, order: &[u32]) -> Result<()> {
        ensure!(
            order.len() == self.n_train,
            "training order of {} samples, want {}",
            order.len(),
            self.n_train
        );
        self.ctx
            .queue()
            .write_buffer(&self.order, 0, bytemuck::cast_slice(order));
        Ok(())
    }

    fn forward(&self, pass: &mut wgpu::ComputePass<'_>, b: BatchRef) {
        let p = &self.pipelines;
        let rows = b.rows as usize;
        pass.set_bind_group(0, &self.bind_group, &[b.offset]);
        pass.set_pipeline(&p.gather);
        pass.dispatch_workgroups(groups(rows * INPUTS), 1, 1);
        for (l, layer) in self.layers.iter().enumerate() {
            pass.set_pipeline(&p.forward[l]);
            pass.dispatch_workgroups(groups(rows * layer.out_dim as usize), 1, 1);
        }
        pass.set_pipeline(&p.xent);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Records training batch `k`: forward, loss (added to the training slot), backward, with
    /// the gradients written into the arena's grads buffer. Follow it with the optimizer's
    /// `encode_step` in the same encoder.
    pub fn encode_train_batch(&self, encoder: &mut wgpu::CommandEncoder, k: usize) {
        let b = self.train[k];
        let rows = b.rows as usize;
        let p = &self.pipelines;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mlp train batch"),
            timestamp_writes: None,
        });
        self.forward(&mut pass, b);
        // Layer 1: delta of its input (the hidden layer), then its gradients; layer 0: its
        // gradients (its input is data).
        pass.set_pipeline(&p.backward_input);
        pass.dispatch_workgroups(groups(rows * HIDDEN), 1, 1);
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let n = (layer.out_dim * (layer.in_dim + 1)) as usize;
            pass.set_pipeline(&p.backward_params[l]);
            pass.dispatch_workgroups(groups(n), 1, 1);
        }
    }

    /// Records the forward pass and loss of every test batch (added to the test slot).
    pub fn encode_eval(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mlp eval"),
            timestamp_writes: None,
        });
        for &b in &self.eval {
            self.forward(&mut pass, b);
        }
    }

    /// Records zeroing both accumulator slots.
    pub fn encode_reset(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.acc, 0, None);
    }

    /// Records a copy of the accumulators into the staging buffer, for [`Mlp::read_snapshot`]
    /// after the submission.
    pub fn encode_snapshot(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.acc, 0, &self.staging, 0, 32);
    }

    /// Waits for the GPU and returns the accumulators of the last submitted
    /// [`Mlp::encode_snapshot`], per slot ([`TRAIN_SLOT`], [`TEST_SLOT`]).
    pub fn read_snapshot(&self) -> Result<[Acc; 2]> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        rx.recv()??;
        let v: Vec<f32> = {
            let view = self.staging.get_mapped_range(..)?;
            bytemuck::cast_slice(&view).to_vec()
        };
        self.staging.unmap();
        let slot = |s: usize| Acc {
            loss_sum: v[s * 4] as f64,
            correct: v[s * 4 + 1] as f64,
            count: v[s * 4 + 2] as f64,
        };
        Ok([slot(TRAIN_SLOT), slot(TEST_SLOT)])
    }
}

/// CPU reference of the forward pass, in f64, over samples `rows` of `data`: the mean
/// cross-entropy, the correct count, and the signs of the hidden pre-activations (a finite
/// difference whose two sides differ in a sign crossed a ReLU kink). `p` holds the four tensors
/// in arena order, concatenated ([`Params::to_f64`]).
pub fn cpu_forward(p: &[f64], data: &Dataset, rows: &[u32]) -> (f64, usize, Vec<bool>) {
    let (w1, rest) = p.split_at(HIDDEN * INPUTS);
    let (b1, rest) = rest.split_at(HIDDEN);
    let (w2, b2) = rest.split_at(CLASSES * HIDDEN);
    assert_eq!(b2.len(), CLASSES, "parameter count");
    let mut loss = 0.0;
    let mut correct = 0;
    let mut signs = Vec::with_capacity(rows.len() * HIDDEN);
    for &r in rows {
        let x = &data.pixels[r as usize * INPUTS..][..INPUTS];
        let h: Vec<f64> = (0..HIDDEN)
            .map(|j| {
                let w = &w1[j * INPUTS..][..INPUTS];
                let z = b1[j] + w.iter().zip(x).map(|(&a, &b)| a * b as f64).sum::<f64>();
                signs.push(z > 0.0);
                z.max(0.0)
            })
            .collect();
        let z: Vec<f64> = (0..CLASSES)
            .map(|k| {
                let w = &w2[k * HIDDEN..][..HIDDEN];
                b2[k] + w.iter().zip(&h).map(|(&a, &b)| a * b).sum::<f64>()
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let label = data.labels[r as usize] as usize;
        loss += lse - z[label];
        let arg = z.iter().position(|&v| v == m).unwrap_or(0);
        correct += usize::from(arg == label);
    }
    (loss / rows.len() as f64, correct, signs)
}

//! The optimizer engine. Each algorithm is a [`Rule`]: a config struct (whose `Default` is
//! PyTorch's) that knows its kernel, its state buffers, the scalars it needs per step and per
//! tensor, and the elementwise update on host slices. [`Optimizer<R>`] runs a rule on the GPU
//! over a whole [`ParamArena`] with one dispatch per binding window; [`CpuOptimizer<R>`]
//! (in `crate::cpu`) runs the same rule, with the same scalars, on the host.
//!
//! Shared semantics (PyTorch's): hyperparameters `lr` and `weight_decay` are per parameter
//! group; a frozen tensor (PyTorch: `grad is None`) is skipped entirely, so its state and step
//! count do not advance and bias corrections are per tensor; step counters are integers; every
//! scalar that involves `1 - beta`, `beta^t` or `lr / ...` is computed on the host in f64 and
//! rounded to f32 once.

pub mod adagrad;
pub mod adam;
pub mod lamb;
pub mod lars;
pub mod rmsprop;
pub mod sgd;

use std::fmt::Debug;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::arena::{ArenaTables, ParamArena, ParamLayout, TensorSpec, Window};
use crate::context::GpuContext;
use crate::cpu::CpuOptimizer;
use crate::dispatch;
use crate::error::{check_non_negative, Error, Result};
use crate::norm::GradClipper;
use crate::pipeline::Kernel;
use crate::readback;
use crate::shaders::KernelId;

pub use adagrad::AdagradConfig;
pub use adam::AdamConfig;
pub use lamb::LambConfig;
pub use lars::LarsConfig;
pub use rmsprop::RmspropConfig;
pub use sgd::SgdConfig;

/// One optimizer state buffer, under its PyTorch name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateSpec {
    /// PyTorch's state key (`exp_avg`, `momentum_buffer`, ...).
    pub name: &'static str,
    /// Binding slot (0 = binding 7).
    pub slot: u32,
    /// Initial value of every element.
    pub init: f32,
}

/// Per-group hyperparameters (PyTorch `param_groups[i]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupHyper {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay (L2 or decoupled, as the optimizer defines it).
    pub weight_decay: f64,
}

impl GroupHyper {
    /// Checks both values are finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("weight_decay", self.weight_decay)
    }
}

/// One dispatch of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// One workgroup per chunk, once per binding window.
    Chunks(KernelId),
    /// One workgroup per tensor (reductions that combine chunk partials).
    Tensors(KernelId),
}

/// A tensor's range in the chunk table (mirrors `ChunkRange` in norm.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct ChunkRange {
    /// First chunk.
    pub first: u32,
    /// Number of chunks (0 for an empty tensor).
    pub count: u32,
}

/// What the optimizer-wide uniform may depend on besides the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HyperCtx {
    /// Flags set by the engine (e.g. `FLAG_GRAD_SCALE` when clipping is attached).
    pub extra_flags: u32,
    /// Number of tensors in the arena.
    pub n_tensors: u32,
}

/// An optimization algorithm: config, kernel, scalars and the host-side elementwise update.
///
/// `update` is the definition the GPU kernel is checked against; it must perform the same f32
/// operations in the same order as the kernel.
pub trait Rule: Clone + Debug + Send + Sync + 'static {
    /// Optimizer-wide uniform, mirrored field by field by the kernel's `<Kernel>Hyper`.
    type Hyper: Pod + Debug;
    /// Per-tensor scalars for one step, mirrored by the kernel's `<Kernel>Tensor`.
    /// The first field is `live: u32`; the all-zero value means "frozen this step".
    type TensorStep: Pod + Debug;
    /// The kernel.
    const KERNEL: KernelId;

    /// Short name (`"adam"`, `"adamw"`, ...).
    fn name(&self) -> &'static str;
    /// Checks every hyperparameter the way PyTorch's constructor does.
    fn validate(&self) -> Result<()>;
    /// Default learning rate of every group.
    fn lr(&self) -> f64;
    /// Default weight decay of every group.
    fn weight_decay(&self) -> f64;
    /// State buffers this configuration keeps.
    fn states(&self) -> Vec<StateSpec>;
    /// The dispatches of one step, in order (default: the kernel once per window).
    fn passes() -> Vec<Pass> {
        vec![Pass::Chunks(Self::KERNEL)]
    }
    /// The optimizer-wide uniform.
    fn hyper(&self, ctx: HyperCtx) -> Self::Hyper;
    /// Scalars for a live tensor at step `t` (the tensor's count after increment, t >= 1).
    fn tensor_step(&self, group: &GroupHyper, t: u64, chunks: ChunkRange) -> Self::TensorStep;
    /// The update of one tensor on host slices (elementwise, or with f64 norms for LARS and
    /// LAMB); `state[slot]` is empty for unused slots.
    fn update(
        h: &Self::Hyper,
        ts: &Self::TensorStep,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    );
    /// Bytes read and written per element per step (SPEC §5), for bandwidth figures.
    fn bytes_per_element(&self) -> u64;
}

/// Host bookkeeping shared by the GPU and CPU paths: groups, per-tensor step counts, frozen
/// flags, and the per-tensor table for the next step.
#[derive(Debug, Clone)]
pub(crate) struct StepBook {
    pub groups: Vec<GroupHyper>,
    pub tensor_group: Vec<usize>,
    pub names: Vec<String>,
    pub steps: Vec<u64>,
    pub frozen: Vec<bool>,
    pub chunks: Vec<ChunkRange>,
}

impl StepBook {
    pub fn new<R: Rule>(rule: &R, specs: &[TensorSpec]) -> Result<Self> {
        rule.validate()?;
        let g = GroupHyper {
            lr: rule.lr(),
            weight_decay: rule.weight_decay(),
        };
        g.validate()?;
        let groups = specs.iter().map(|s| s.group).max().unwrap_or(0) + 1;
        Ok(Self {
            groups: vec![g; groups],
            tensor_group: specs.iter().map(|s| s.group).collect(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            steps: vec![0; specs.len()],
            frozen: vec![false; specs.len()],
            chunks: chunk_ranges(specs),
        })
    }

    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
    }

    /// Fills `out` with this step's per-tensor scalars and advances the active tensors' counts.
    pub fn advance<R: Rule>(&mut self, rule: &R, out: &mut Vec<R::TensorStep>) {
        out.clear();
        for i in 0..self.steps.len() {
            if self.frozen[i] {
                out.push(R::TensorStep::zeroed());
            } else {
                self.steps[i] += 1;
                out.push(rule.tensor_step(
                    &self.groups[self.tensor_group[i]],
                    self.steps[i],
                    self.chunks[i],
                ));
            }
        }
    }

    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_non_negative("lr", lr)?;
        for g in &mut self.groups {
            g.lr = lr;
        }
        Ok(())
    }

    pub fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()> {
        h.validate()?;
        let groups = self.groups.len();
        let slot = self
            .groups
            .get_mut(group)
            .ok_or(Error::UnknownGroup { group, groups })?;
        *slot = h;
        Ok(())
    }

    pub fn group(&self, group: usize) -> Result<GroupHyper> {
        self.groups.get(group).copied().ok_or(Error::UnknownGroup {
            group,
            groups: self.groups.len(),
        })
    }
}

/// Each tensor's range in the chunk table, in the order `ParamLayout` builds it.
pub(crate) fn chunk_ranges(specs: &[TensorSpec]) -> Vec<ChunkRange> {
    let mut first = 0u32;
    specs
        .iter()
        .map(|s| {
            let count = s.len.div_ceil(crate::shaders::CHUNK as usize) as u32;
            let r = ChunkRange { first, count };
            first += count;
            r
        })
        .collect()
}

/// Bytes of a buffer holding `n` items of `T`, at least 16 (wgpu rejects empty bindings).
pub(crate) fn table_bytes<T>(n: usize) -> u64 {
    ((n * std::mem::size_of::<T>()) as u64).max(16)
}

/// A fused optimizer running rule `R` on the GPU over one [`ParamArena`].
///
/// Construction creates every buffer, bind group and pipeline it will use. A step writes the
/// per-tensor scalar table with one `queue.write_buffer` and records one dispatch per binding
/// window (one for any arena that fits a storage binding), whatever the tensor count; LARS and
/// LAMB record three (norm partials, per-tensor trust ratios, update).
#[derive(Debug)]
pub struct Optimizer<R: Rule> {
    rule: R,
    passes: Vec<(Pass, Arc<Kernel>)>,
    arena_id: u64,
    layout: Arc<ParamLayout>,
    book: StepBook,
    table: Vec<R::TensorStep>,
    buffers: OptimizerBuffers,
    states: Vec<(StateSpec, wgpu::Buffer)>,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    tensor_grid: (u32, u32),
    clipper: Option<Arc<GradClipper>>,
}

/// The buffers a step binds, kept so bind groups can be rebuilt when clipping is attached.
#[derive(Debug)]
struct OptimizerBuffers {
    hyper: wgpu::Buffer,
    tables: ArenaTables,
    tensors: wgpu::Buffer,
    aux: wgpu::Buffer,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    partials: Option<wgpu::Buffer>,
    dummy: wgpu::Buffer,
}

impl<R: Rule> Optimizer<R> {
    /// Builds the optimizer for `arena`: validates `rule`, creates and initialises the state
    /// buffers, and builds one bind group per binding window.
    pub fn new(ctx: &GpuContext, arena: &ParamArena, rule: R) -> Result<Self> {
        let layout = arena.layout_arc();
        let book = StepBook::new(&rule, &tensor_specs(&layout))?;
        let label = R::KERNEL.entry_point();
        let bytes = layout.buffer_bytes();
        let specs = rule.states();
        if !specs.is_empty() && bytes > ctx.limits().max_buffer_size {
            // Checked before creating anything, so a too-large optimizer fails cleanly.
            return Err(Error::BufferTooLarge {
                what: format!("{label} state"),
                bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        let mut passes = Vec::new();
        for pass in R::passes() {
            let (Pass::Chunks(k) | Pass::Tensors(k)) = pass;
            passes.push((pass, ctx.pipelines().get(ctx, k)?));
        }
        let n_tensors = layout.tensors().len();
        let n_chunks = layout.chunks().len();
        let windows = layout.windows();

        ctx.scoped(|| -> Result<Self> {
            let dev = ctx.device();
            let uniform = |name: &str, size: u64| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} {name}")),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let storage =
                |name: &str, size: u64| storage_buffer(ctx, &format!("{label} {name}"), size);
            let hyper = uniform("hyper", std::mem::size_of::<R::Hyper>() as u64);
            let aux = storage("aux", 16);
            ctx.queue()
                .write_buffer(&aux, 0, bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 0.0]));
            let partials = R::KERNEL
                .uses_partials()
                .then(|| storage("partials", table_bytes::<[f32; 4]>(n_chunks + n_tensors)));
            let mut states = Vec::with_capacity(specs.len());
            for s in &specs {
                let buf = storage(s.name, bytes);
                if s.init != 0.0 {
                    // Padding stays zero; only the tensors' elements take the initial value.
                    let init: Vec<Vec<f32>> = layout
                        .tensors()
                        .iter()
                        .map(|t| vec![s.init; t.len])
                        .collect();
                    let image = layout.pack(&init)?;
                    ctx.queue()
                        .write_buffer(&buf, 0, bytemuck::cast_slice(&image));
                }
                states.push((*s, buf));
            }
            let mut opt = Self {
                table: Vec::with_capacity(n_tensors),
                passes,
                arena_id: arena.id(),
                layout: layout.clone(),
                book,
                buffers: OptimizerBuffers {
                    hyper,
                    tables: ArenaTables::new(ctx, &layout, label),
                    tensors: storage("tensors", table_bytes::<R::TensorStep>(n_tensors)),
                    aux,
                    params: arena.params_buffer().clone(),
                    grads: arena.grads_buffer().clone(),
                    partials,
                    // Slots this configuration does not use are bound to one small dummy.
                    dummy: storage("unused state", 16),
                },
                states,
                bind_groups: Vec::new(),
                grids: windows
                    .iter()
                    .map(|w| dispatch::grid(w.chunk_count, ctx.max_workgroups_per_dim()))
                    .collect(),
                tensor_grid: dispatch::grid(n_tensors as u32, ctx.max_workgroups_per_dim()),
                clipper: None,
                rule,
            };
            opt.write_hyper(ctx);
            opt.bind_groups = opt.build_bind_groups(ctx);
            Ok(opt)
        })?
    }

    fn build_bind_groups(&self, ctx: &GpuContext) -> Vec<wgpu::BindGroup> {
        let b = &self.buffers;
        let aux = match &self.clipper {
            Some(c) => c.scale_buffer(),
            None => &b.aux,
        };
        let layout = &self.passes[0].1.layout;
        let label = R::KERNEL.entry_point();
        self.layout
            .windows()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                let mut entries = vec![
                    entry(0, b.hyper.as_entire_binding()),
                    entry(1, b.tables.window(i)),
                    entry(2, b.tables.chunks.as_entire_binding()),
                    entry(3, b.tensors.as_entire_binding()),
                    entry(4, aux.as_entire_binding()),
                    entry(5, window_binding(&b.params, w)),
                    entry(6, window_binding(&b.grads, w)),
                ];
                for slot in 0..R::KERNEL.state_slots() {
                    let resource = match self.states.iter().find(|(s, _)| s.slot == slot) {
                        Some((_, buf)) => window_binding(buf, w),
                        None => b.dummy.as_entire_binding(),
                    };
                    entries.push(entry(7 + slot, resource));
                }
                if let Some(p) = &b.partials {
                    entries.push(entry(10, p.as_entire_binding()));
                }
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(label),
                    layout,
                    entries: &entries,
                })
            })
            .collect()
    }

    fn write_hyper(&self, ctx: &GpuContext) {
        let extra_flags = if self.clipper.is_some() {
            crate::shaders::FLAG_GRAD_SCALE
        } else {
            0
        };
        let h = self.rule.hyper(HyperCtx {
            extra_flags,
            n_tensors: self.layout.tensors().len() as u32,
        });
        ctx.queue()
            .write_buffer(&self.buffers.hyper, 0, bytemuck::bytes_of(&h));
    }

    /// Attaches (or, with `None`, detaches) global-norm gradient clipping. While attached,
    /// every step first records the clipper's norm passes over the gradients, and the update
    /// kernel multiplies each gradient by the clip coefficient the GPU computed, with no extra
    /// pass over the gradients and no host round trip. The grads buffer itself is not modified.
    pub fn set_grad_clip(
        &mut self,
        ctx: &GpuContext,
        clipper: Option<Arc<GradClipper>>,
    ) -> Result<()> {
        if let Some(c) = &clipper {
            if c.arena_id() != self.arena_id {
                return Err(Error::ArenaMismatch {
                    expected: self.arena_id,
                    got: c.arena_id(),
                });
            }
        }
        self.clipper = clipper;
        self.bind_groups = ctx.scoped(|| self.build_bind_groups(ctx))?;
        self.write_hyper(ctx);
        Ok(())
    }

    /// The attached gradient clipper.
    pub fn grad_clip(&self) -> Option<&Arc<GradClipper>> {
        self.clipper.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &R {
        &self.rule
    }

    /// Records one optimizer step into `encoder`: writes this step's per-tensor scalars and
    /// records one dispatch per binding window. Put forward, backward and update in one
    /// submission this way.
    ///
    /// The scalars are written with `queue.write_buffer`, which takes effect at the next
    /// `queue.submit`; record at most one step of a given optimizer per submission. Step counts
    /// advance here, on the assumption that the encoder is submitted.
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        arena: &ParamArena,
    ) -> Result<()> {
        if arena.id() != self.arena_id {
            return Err(Error::ArenaMismatch {
                expected: self.arena_id,
                got: arena.id(),
            });
        }
        self.book.advance(&self.rule, &mut self.table);
        ctx.queue()
            .write_buffer(&self.buffers.tensors, 0, bytemuck::cast_slice(&self.table));
        if let Some(c) = &self.clipper {
            c.encode(encoder);
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(R::KERNEL.entry_point()),
            timestamp_writes: None,
        });
        for (p, kernel) in &self.passes {
            pass.set_pipeline(&kernel.pipeline);
            match p {
                Pass::Chunks(_) => {
                    for (bg, &(x, y)) in self.bind_groups.iter().zip(&self.grids) {
                        if x > 0 {
                            pass.set_bind_group(0, bg, &[]);
                            pass.dispatch_workgroups(x, y, 1);
                        }
                    }
                }
                Pass::Tensors(_) => {
                    // Any window's bind group will do: this pass touches only the tables.
                    let (x, y) = self.tensor_grid;
                    pass.set_bind_group(0, &self.bind_groups[0], &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        Ok(())
    }

    /// Encodes and submits one step.
    pub fn step(&mut self, ctx: &GpuContext, arena: &ParamArena) -> Result<()> {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(R::KERNEL.entry_point()),
            });
        self.encode_step(ctx, &mut encoder, arena)?;
        ctx.queue().submit([encoder.finish()]);
        Ok(())
    }

    /// Dispatches recorded per step by this optimizer (one per pass and binding window with
    /// work), not counting an attached clipper's.
    pub fn dispatches_per_step(&self) -> usize {
        let windows = self.grids.iter().filter(|g| g.0 > 0).count();
        self.passes
            .iter()
            .map(|(p, _)| match p {
                Pass::Chunks(_) => windows,
                Pass::Tensors(_) => usize::from(self.tensor_grid.0 > 0),
            })
            .sum()
    }

    /// Learning rate of group 0.
    pub fn lr(&self) -> f64 {
        self.book.groups[0].lr
    }

    /// Sets the learning rate of every group (what an LR scheduler does each step).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.book.set_lr(lr)
    }

    /// Hyperparameters of one group.
    pub fn group(&self, group: usize) -> Result<GroupHyper> {
        self.book.group(group)
    }

    /// Replaces one group's hyperparameters.
    pub fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()> {
        self.book.set_group(group, h)
    }

    /// Freezes (PyTorch: `grad = None`) or unfreezes a tensor for the following steps. A frozen
    /// tensor's params, state and step count are left exactly as they are.
    pub fn set_frozen(&mut self, tensor: &str, frozen: bool) -> Result<()> {
        let i = self.layout.index_of(tensor)?;
        self.book.frozen[i] = frozen;
        Ok(())
    }

    /// Steps this tensor has taken (PyTorch `state["step"]`).
    pub fn step_count(&self, tensor: &str) -> Result<u64> {
        Ok(self.book.steps[self.layout.index_of(tensor)?])
    }

    /// The state buffers this optimizer keeps, under PyTorch's names.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|(s, _)| s.name).collect()
    }

    /// A state buffer (same layout as the arena).
    pub fn state_buffer(&self, state: &str) -> Result<&wgpu::Buffer> {
        self.states
            .iter()
            .find(|(s, _)| s.name == state)
            .map(|(_, b)| b)
            .ok_or_else(|| Error::UnknownState {
                name: state.to_string(),
                available: self.state_names(),
            })
    }

    /// Reads one tensor's slice of a state buffer back to the host.
    pub fn read_state(&self, ctx: &GpuContext, state: &str, tensor: &str) -> Result<Vec<f32>> {
        let buf = self.state_buffer(state)?;
        let t = self.layout.tensor(tensor)?;
        readback::read_f32(ctx, buf, t.offset as u64, t.len)
    }

    /// Reads a whole state buffer, padding included.
    pub fn read_state_image(&self, ctx: &GpuContext, state: &str) -> Result<Vec<f32>> {
        let buf = self.state_buffer(state)?;
        readback::read_f32(ctx, buf, 0, self.layout.total_elements() as usize)
    }

    /// Per-tensor trust ratios of the last step (LARS and LAMB; 1 for tensors that do not
    /// adapt; the previous value for tensors frozen in that step), read back from the GPU.
    /// `None` for elementwise optimizers.
    pub fn read_trust_ratios(&self, ctx: &GpuContext) -> Result<Option<Vec<f32>>> {
        let Some(p) = &self.buffers.partials else {
            return Ok(None);
        };
        let n = self.layout.tensors().len();
        let base = self.layout.chunks().len() as u64 * 4;
        let raw = readback::read_f32(ctx, p, base, n * 4)?;
        Ok(Some(raw.chunks_exact(4).map(|v| v[0]).collect()))
    }
}

/// A storage buffer that can also be copied to and from.
pub(crate) fn storage_buffer(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Binds the window `w` of an arena-shaped buffer.
pub(crate) fn window_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.byte_offset(),
        size: std::num::NonZeroU64::new(w.byte_size()),
    })
}

pub(crate) fn tensor_specs(layout: &ParamLayout) -> Vec<TensorSpec> {
    layout
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.len).in_group(t.group))
        .collect()
}

/// Object-safe view of a GPU optimizer, for code that picks the algorithm at run time
/// (`optbench`, the test tables).
pub trait DynOptimizer {
    /// Short name of the algorithm.
    fn name(&self) -> &'static str;
    /// See [`Optimizer::step`].
    fn step(&mut self, ctx: &GpuContext, arena: &ParamArena) -> Result<()>;
    /// See [`Optimizer::encode_step`].
    fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        arena: &ParamArena,
    ) -> Result<()>;
    /// See [`Optimizer::state_names`].
    fn state_names(&self) -> Vec<&'static str>;
    /// See [`Optimizer::read_state`].
    fn read_state(&self, ctx: &GpuContext, state: &str, tensor: &str) -> Result<Vec<f32>>;
    /// See [`Optimizer::read_state_image`].
    fn read_state_image(&self, ctx: &GpuContext, state: &str) -> Result<Vec<f32>>;
    /// See [`Optimizer::set_frozen`].
    fn set_frozen(&mut self, tensor: &str, frozen: bool) -> Result<()>;
    /// See [`Optimizer::set_lr`].
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// See [`Optimizer::set_group`].
    fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()>;
    /// See [`Optimizer::step_count`].
    fn step_count(&self, tensor: &str) -> Result<u64>;
    /// See [`Optimizer::dispatches_per_step`].
    fn dispatches_per_step(&self) -> usize;
    /// See [`Optimizer::set_grad_clip`].
    fn set_grad_clip(&mut self, ctx: &GpuContext, clipper: Option<Arc<GradClipper>>) -> Result<()>;
    /// See [`Optimizer::read_trust_ratios`].
    fn read_trust_ratios(&self, ctx: &GpuContext) -> Result<Option<Vec<f32>>>;
}

impl<R: Rule> DynOptimizer for Optimizer<R> {
    fn name(&self) -> &'static str {
        self.rule.name()
    }
    fn step(&mut self, ctx: &GpuContext, arena: &ParamArena) -> Result<()> {
        Optimizer::step(self, ctx, arena)
    }
    fn encode_step(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        arena: &ParamArena,
    ) -> Result<()> {
        Optimizer::encode_step(self, ctx, encoder, arena)
    }
    fn state_names(&self) -> Vec<&'static str> {
        Optimizer::state_names(self)
    }
    fn read_state(&self, ctx: &GpuContext, state: &str, tensor: &str) -> Result<Vec<f32>> {
        Optimizer::read_state(self, ctx, state, tensor)
    }
    fn read_state_image(&self, ctx: &GpuContext, state: &str) -> Result<Vec<f32>> {
        Optimizer::read_state_image(self, ctx, state)
    }
    fn set_frozen(&mut self, tensor: &str, frozen: bool) -> Result<()> {
        Optimizer::set_frozen(self, tensor, frozen)
    }
    fn set_lr(&mut self, lr: f64) -> Result<()> {
        Optimizer::set_lr(self, lr)
    }
    fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()> {
        Optimizer::set_group(self, group, h)
    }
    fn step_count(&self, tensor: &str) -> Result<u64> {
        Optimizer::step_count(self, tensor)
    }
    fn dispatches_per_step(&self) -> usize {
        Optimizer::dispatches_per_step(self)
    }
    fn set_grad_clip(&mut self, ctx: &GpuContext, clipper: Option<Arc<GradClipper>>) -> Result<()> {
        Optimizer::set_grad_clip(self, ctx, clipper)
    }
    fn read_trust_ratios(&self, ctx: &GpuContext) -> Result<Option<Vec<f32>>> {
        Optimizer::read_trust_ratios(self, ctx)
    }
}

/// Any elementwise optimizer configuration, for choosing the algorithm at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerConfig {
    /// torch.optim.SGD
    Sgd(SgdConfig),
    /// torch.optim.Adam / AdamW
    Adam(AdamConfig),
    /// torch.optim.RMSprop
    Rmsprop(RmspropConfig),
    /// torch.optim.Adagrad
    Adagrad(AdagradConfig),
    /// LARS (timm)
    Lars(LarsConfig),
    /// LAMB (timm)
    Lamb(LambConfig),
}

macro_rules! each_config {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            OptimizerConfig::Sgd($c) => $body,
            OptimizerConfig::Adam($c) => $body,
            OptimizerConfig::Rmsprop($c) => $body,
            OptimizerConfig::Adagrad($c) => $body,
            OptimizerConfig::Lars($c) => $body,
            OptimizerConfig::Lamb($c) => $body,
        }
    };
}

impl OptimizerConfig {
    /// Short name of the algorithm.
    pub fn name(&self) -> &'static str {
        each_config!(self, c => c.name())
    }

    /// Bytes moved per element per step (SPEC §5).
    pub fn bytes_per_element(&self) -> u64 {
        each_config!(self, c => c.bytes_per_element())
    }

    /// Default learning rate.
    pub fn lr(&self) -> f64 {
        each_config!(self, c => c.lr())
    }

    /// Checks the hyperparameters.
    pub fn validate(&self) -> Result<()> {
        each_config!(self, c => c.validate())
    }

    /// Builds the GPU optimizer over `arena`.
    pub fn build(&self, ctx: &GpuContext, arena: &ParamArena) -> Result<Box<dyn DynOptimizer>> {
        each_config!(self, c => Ok(Box::new(Optimizer::new(ctx, arena, c.clone())?)))
    }

    /// Builds the CPU reference over tensors shaped like `specs`.
    pub fn build_cpu(&self, specs: &[TensorSpec]) -> Result<Box<dyn crate::cpu::DynCpuOptimizer>> {
        each_config!(self, c => Ok(Box::new(CpuOptimizer::new(c.clone(), specs)?)))
    }
}

/// torch.lerp's CPU formula (mirrors `lerp_torch` in common.wgsl).
#[inline]
pub(crate) fn lerp_torch(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// Flag bit for `maximize`.
pub(crate) fn maximize_flag(maximize: bool) -> u32 {
    if maximize {
        crate::shaders::FLAG_MAXIMIZE
    } else {
        0
    }
}

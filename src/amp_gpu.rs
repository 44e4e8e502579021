//! The AMP guard's GPU half (see [`crate::amp`] for what it does and its host half): the
//! inf-norm reduction over the live gradients and the `amp_decide` kernel, recorded before the
//! update in the same submission.

use crate::amp::{AmpConfig, AmpHyper, AmpState};
use crate::error::Result;
use crate::optim::book::Snapshot;

/// The guard's GPU side, owned by an [`crate::Optimizer`]: built at `set_amp`, so a step
/// allocates nothing.
#[derive(Debug)]
pub(crate) struct AmpGpu {
    pub cfg: AmpConfig,
    ctx: crate::GpuContext,
    guard: crate::norm::NormReducer,
    kernel: std::sync::Arc<crate::pipeline::Kernel>,
    hyper_buf: wgpu::Buffer,
    state: wgpu::Buffer,
    coef: wgpu::Buffer,
    normal_args: wgpu::Buffer,
    indirect: wgpu::Buffer,
    dummy: wgpu::Buffer,
    staging: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    n_args: u32,
    /// A step was recorded whose found flag has not been read back.
    pub pending: bool,
    /// The bookkeeping before that step.
    pub snapshot: Snapshot,
}

impl AmpGpu {
    /// The guard for an optimizer whose update issues `grids` dispatches (in order).
    pub(crate) fn new(
        ctx: &crate::GpuContext,
        arena: &crate::ParamArena,
        cfg: AmpConfig,
        grids: &[(u32, u32)],
        clip: Option<&crate::GradClipper>,
    ) -> Result<Self> {
        use crate::gpu_buffers::storage_buffer;
        cfg.validate()?;
        let guard = crate::norm::NormReducer::new(
            ctx,
            arena,
            crate::norm::NormSource::Grads,
            crate::NormType::Inf,
        )?;
        let kernel = ctx.kernel(crate::shaders::AMP_DECIDE)?;
        let args: Vec<u32> = grids.iter().flat_map(|&(x, y)| [x, y, 1]).collect();
        let n_args = args.len() as u32;
        ctx.scoped(|| {
            let dev = ctx.device();
            let hyper_buf = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("amp_decide hyper"),
                size: std::mem::size_of::<AmpHyper>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let state = storage_buffer(ctx, "amp_decide state", 16);
            ctx.queue()
                .write_buffer(&state, 0, bytemuck::bytes_of(&AmpState::new(&cfg)));
            let coef = storage_buffer(ctx, "amp_decide coef", 16);
            ctx.queue()
                .write_buffer(&coef, 0, bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 0.0]));
            let bytes = (args.len().max(4) * 4) as u64;
            let normal_args = storage_buffer(ctx, "amp_decide normal args", bytes);
            let indirect = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("amp_decide indirect args"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::INDIRECT
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if !args.is_empty() {
                ctx.queue()
                    .write_buffer(&normal_args, 0, bytemuck::cast_slice(&args));
                ctx.queue()
                    .write_buffer(&indirect, 0, bytemuck::cast_slice(&args));
            }
            let dummy = storage_buffer(ctx, "amp_decide no clip", 16);
            let staging = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("amp_decide readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = Self::make_bind_group(
                ctx,
                &kernel,
                [
                    &hyper_buf,
                    guard.out_buffer(),
                    clip.map_or(&dummy, |c| c.scale_buffer()),
                    &normal_args,
                    &state,
                    &coef,
                    &indirect,
                ],
            );
            Self {
                cfg,
                ctx: ctx.clone(),
                guard,
                kernel,
                hyper_buf,
                state,
                coef,
                normal_args,
                indirect,
                dummy,
                staging,
                bind_group,
                n_args,
                pending: false,
                snapshot: Snapshot::default(),
            }
        })
    }

    fn make_bind_group(
        ctx: &crate::GpuContext,
        kernel: &crate::pipeline::Kernel,
        bufs: [&wgpu::Buffer; 7],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("amp_decide"),
            layout: &kernel.layout,
            entries: &entries,
        })
    }

    /// Rebinds the clipper's norm (or none) after `set_grad_clip`.
    pub(crate) fn rebind(&mut self, clip: Option<&crate::GradClipper>) -> Result<()> {
        let ctx = self.ctx.clone();
        self.bind_group = ctx.scoped(|| {
            Self::make_bind_group(
                &ctx,
                &self.kernel,
                [
                    &self.hyper_buf,
                    self.guard.out_buffer(),
                    clip.map_or(&self.dummy, |c| c.scale_buffer()),
                    &self.normal_args,
                    &self.state,
                    &self.coef,
                    &self.indirect,
                ],
            )
        })?;
        Ok(())
    }

    /// The buffer the update kernels bind as `aux` (the gradient coefficient).
    pub(crate) fn coef_buffer(&self) -> &wgpu::Buffer {
        &self.coef
    }

    /// The indirect arguments the update is dispatched with.
    pub(crate) fn indirect_buffer(&self) -> &wgpu::Buffer {
        &self.indirect
    }

    /// The buffer holding [`AmpState`] (its first f32 is the current loss scale).
    pub(crate) fn state_buffer(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// Records the guard's norm and decision (writing the live ranges and this step's
    /// hyperparameters first), and the copy of the decision for the lazy readback.
    pub(crate) fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        ranges: &[crate::arena::ChunkRange],
        clip_max_norm: Option<f64>,
    ) {
        self.guard.write_ranges(ranges);
        let h = AmpHyper::new(&self.cfg, self.n_args, clip_max_norm);
        self.ctx
            .queue()
            .write_buffer(&self.hyper_buf, 0, bytemuck::bytes_of(&h));
        self.guard.encode(encoder);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("amp_decide"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&self.state, 0, &self.staging, 0, 16);
        self.pending = true;
    }

    /// Reads back the decision of the last recorded step (waiting for it): `None` when no
    /// step is pending.
    pub(crate) fn take_pending(&mut self) -> Result<Option<AmpState>> {
        if !self.pending {
            return Ok(None);
        }
        let st = crate::readback::map_read::<AmpState>(&self.ctx, &self.staging)?;
        self.pending = false;
        Ok(st.first().copied())
    }

    /// The current state (a readback).
    pub(crate) fn read_state(&self) -> Result<AmpState> {
        let v = crate::readback::read_f32(&self.ctx, &self.state, 0, 4)?;
        Ok(bytemuck::pod_read_unaligned(bytemuck::cast_slice(&v)))
    }

    /// Replaces the state (checkpoint load).
    pub(crate) fn write_state(&self, st: &AmpState) {
        self.ctx
            .queue()
            .write_buffer(&self.state, 0, bytemuck::bytes_of(st));
    }
}

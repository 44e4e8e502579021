//! Adafactor's segment of the GPU engine ([`crate::optim::rule::SegmentKind::Factored`]):
//! one workgroup per tensor. The rule itself (config, scalars, CPU twin) is
//! src/optim/adafactor.rs.

use super::adafactor::{
    factors, state_lens, AdafactorBatch, AdafactorConfig, AdafactorGpuTensor, AdafactorHyper,
    AdafactorTensor, ADAFACTOR_STEP,
};
use super::book::{Book, SegmentPlan};
use super::rule::{Rule, StateSpec};
use super::segment::{Dispatcher, GpuSegment};
use crate::arena::{ParamArena, SegmentLayout, TensorInfo};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::gpu_buffers::{range_binding as binding, storage_buffer};
use crate::pipeline::Kernel;
use crate::shaders::FLAG_GRAD_SCALE;
use bytemuck::Zeroable;
use std::sync::Arc;

/// One batch of an Adafactor segment: tensors whose params / grads and state windows each fit
/// one storage binding.
#[derive(Debug)]
struct Batch {
    count: u32,
    grid: (u32, u32),
    uniform: wgpu::Buffer,
    /// (byte offset, byte size) of the params / grads window.
    p_window: (u64, u64),
    /// (byte offset, byte size) of the state window.
    s_window: (u64, u64),
}

/// The GPU segment of Adafactor (see the module docs). Built once; a step writes the group and
/// tensor tables and records one dispatch per batch.
#[derive(Debug)]
pub(crate) struct AdafactorSegment {
    layout: SegmentLayout,
    kernel: Arc<Kernel>,
    hypers: wgpu::Buffer,
    tensors: wgpu::Buffer,
    /// Every member's row_var and col_var (or variance), each region on a multiple of 4
    /// elements.
    state: wgpu::Buffer,
    state_elements: u64,
    /// The three state specs, all on `state` (what a state reset re-initializes).
    states: Vec<(StateSpec, wgpu::Buffer)>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// An unused binding 7 (the layout's scratch slot).
    scratch: wgpu::Buffer,
    batches: Vec<Batch>,
    bind_groups: Vec<wgpu::BindGroup>,
    infos: Vec<TensorInfo>,
    /// Per member: (first element of row_var or variance, its length, first of col_var, its
    /// length) in `state`.
    places: Vec<[usize; 4]>,
    /// Per member: its offsets in its batch's windows (p_off, r_off, c_off).
    offsets: Vec<[u32; 3]>,
    hyper_table: Vec<AdafactorHyper>,
    tensor_table: Vec<AdafactorGpuTensor>,
}

impl AdafactorSegment {
    pub(crate) fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        plan: &SegmentPlan,
        aux: &wgpu::Buffer,
    ) -> Result<Self> {
        let label = "adafactor";
        let align = (ctx.limits().min_storage_buffer_offset_alignment as u64).max(4);
        let cap = ctx.max_binding_bytes();
        let layout = SegmentLayout::new(
            arena.layout(),
            plan.members.clone(),
            &plan.member_groups,
            cap,
            align,
            0,
        )?;
        let all = arena.layout().tensors();
        let infos: Vec<TensorInfo> = plan.members.iter().map(|&i| all[i].clone()).collect();
        // The state regions, packed in member order.
        let mut places = Vec::with_capacity(infos.len());
        let mut cursor = 0u64;
        for t in &infos {
            let (a, b) = state_lens(t);
            let ra = cursor;
            cursor += (a as u64).next_multiple_of(4);
            let rb = cursor;
            cursor += (b as u64).next_multiple_of(4);
            places.push([ra as usize, a, rb as usize, b]);
        }
        let state_bytes = (cursor * 4).max(16);
        if state_bytes > ctx.limits().max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "adafactor state".into(),
                bytes: state_bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        let window = |lo_elem: usize, hi_elem: usize| -> (u64, u64) {
            let lo = (lo_elem as u64 * 4) / align * align;
            (lo, (hi_elem as u64 * 4).saturating_sub(lo))
        };
        let s_end = |k: usize| places[k][2] + places[k][3].next_multiple_of(4);
        // Batches: consecutive members while both windows fit one binding.
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut start = 0usize;
        while start < infos.len() {
            let mut end = start;
            while end < infos.len() {
                let pw = window(infos[start].offset, infos[end].offset + infos[end].len);
                let sw = window(places[start][0], s_end(end));
                if pw.1 > cap || sw.1 > cap {
                    if end == start {
                        return Err(Error::BufferTooLarge {
                            what: format!("adafactor windows of tensor {:?}", infos[end].name),
                            bytes: pw.1.max(sw.1),
                            limit: cap,
                        });
                    }
                    break;
                }
                end += 1;
            }
            spans.push((start, end - start));
            start = end;
        }
        let kernel = ctx.kernel(ADAFACTOR_STEP)?;
        let params = arena.params_buffer().clone();
        let grads = arena.grads_buffer().clone();
        let (hypers, tensors, state, scratch) = ctx.scoped(|| {
            let hypers = storage_buffer(
                ctx,
                &format!("{label} hypers"),
                (plan.groups.len().max(1) * std::mem::size_of::<AdafactorHyper>()) as u64,
            );
            let tensors = storage_buffer(
                ctx,
                &format!("{label} tensors"),
                (infos.len().max(1) * std::mem::size_of::<AdafactorGpuTensor>()) as u64,
            );
            let state = storage_buffer(ctx, &format!("{label} state"), state_bytes);
            let scratch = storage_buffer(ctx, &format!("{label} scratch"), 16);
            (hypers, tensors, state, scratch)
        })?;
        let mut offsets = vec![[0u32; 3]; infos.len()];
        let mut batches = Vec::with_capacity(spans.len());
        for &(s0, count) in &spans {
            let last = s0 + count - 1;
            let p_window = window(infos[s0].offset, infos[last].offset + infos[last].len);
            let s_window = window(places[s0][0], s_end(last));
            for k in s0..s0 + count {
                offsets[k] = [
                    (infos[k].offset as u64 - p_window.0 / 4) as u32,
                    (places[k][0] as u64 - s_window.0 / 4) as u32,
                    (places[k][2] as u64 - s_window.0 / 4) as u32,
                ];
            }
            // Bindings cannot be empty; a window past the buffer's end is clipped to it.
            let fit = |buf: &wgpu::Buffer, (off, size): (u64, u64)| {
                let off = off.min(buf.size().saturating_sub(16));
                (off, size.max(16).min(buf.size() - off))
            };
            let p_window = fit(&params, p_window);
            let s_window = fit(&state, s_window);
            let uniform = ctx.scoped(|| {
                let u = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} batch")),
                    size: 16,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let row = AdafactorBatch {
                    first: s0 as u32,
                    count: count as u32,
                    pad0: 0,
                    pad1: 0,
                };
                ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&row));
                u
            })?;
            batches.push(Batch {
                count: count as u32,
                grid: dispatch::grid(count as u32, ctx.max_workgroups_per_dim()),
                uniform,
                p_window,
                s_window,
            });
        }
        let mut seg = Self {
            layout,
            kernel,
            hypers,
            tensors,
            states: AdafactorConfig::default()
                .states()
                .into_iter()
                .map(|st| (st, state.clone()))
                .collect(),
            state,
            state_elements: state_bytes / 4,
            params,
            grads,
            scratch,
            batches,
            bind_groups: Vec::new(),
            hyper_table: Vec::with_capacity(plan.groups.len()),
            tensor_table: Vec::with_capacity(infos.len()),
            infos,
            places,
            offsets,
        };
        let bgs = ctx.scoped(|| seg.bind_groups(ctx, aux))?;
        seg.bind_groups = bgs;
        Ok(seg)
    }
}

impl GpuSegment for AdafactorSegment {
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool) {
        let extra_flags = if grad_scale { FLAG_GRAD_SCALE } else { 0 };
        book.segment_hypers::<AdafactorConfig>(seg, extra_flags, &mut self.hyper_table);
        self.tensor_table.clear();
        for local in 0..book.segments[seg].members.len() {
            let step = book.member_step::<AdafactorConfig>(
                seg,
                local,
                self.layout.ranges()[local],
                &self.infos[local],
            );
            let [p_off, r_off, c_off] = self.offsets[local];
            self.tensor_table.push(AdafactorGpuTensor {
                step: step.unwrap_or_else(AdafactorTensor::zeroed),
                p_off,
                r_off,
                c_off,
                pad: 0,
            });
        }
        let q = ctx.queue();
        if !self.hyper_table.is_empty() {
            q.write_buffer(&self.hypers, 0, bytemuck::cast_slice(&self.hyper_table));
        }
        if !self.tensor_table.is_empty() {
            q.write_buffer(&self.tensors, 0, bytemuck::cast_slice(&self.tensor_table));
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, d: &mut Dispatcher<'_>) {
        // Through `d`: the AMP guard gates the whole step (state and params).
        for (b, bg) in self.batches.iter().zip(&self.bind_groups) {
            if b.count == 0 {
                continue;
            }
            pass.set_pipeline(&self.kernel.pipeline);
            pass.set_bind_group(0, bg, &[]);
            d.dispatch(pass, b.grid);
        }
    }

    fn dispatch_grids(&self) -> Vec<(u32, u32)> {
        self.batches
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| b.grid)
            .collect()
    }

    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup> {
        self.batches
            .iter()
            .map(|b| {
                let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("adafactor_step"),
                    layout: &self.kernel.layout,
                    entries: &[
                        entry(0, self.hypers.as_entire_binding()),
                        entry(1, b.uniform.as_entire_binding()),
                        entry(2, self.tensors.as_entire_binding()),
                        entry(3, aux.as_entire_binding()),
                        entry(4, binding(&self.params, b.p_window)),
                        entry(5, binding(&self.grads, b.p_window)),
                        entry(6, binding(&self.state, b.s_window)),
                        entry(7, self.scratch.as_entire_binding()),
                    ],
                })
            })
            .collect()
    }

    fn set_bind_groups(&mut self, bgs: Vec<wgpu::BindGroup>) {
        self.bind_groups = bgs;
    }

    fn layout(&self) -> &SegmentLayout {
        &self.layout
    }

    fn state_buffer(&self, name: &str) -> Option<&wgpu::Buffer> {
        matches!(name, "row_var" | "col_var" | "variance").then_some(&self.state)
    }

    fn state_place(&self, name: &str, local: usize, _len: usize) -> Option<(usize, usize)> {
        let info = self.infos.get(local)?;
        let [ra, a, rb, b] = *self.places.get(local)?;
        let factored = factors(info).0;
        match (name, factored) {
            ("row_var", true) | ("variance", false) => Some((ra, a)),
            ("col_var", true) => Some((rb, b)),
            // Kept by no such tensor.
            _ => Some((ra, 0)),
        }
    }

    fn states(&self) -> &[(StateSpec, wgpu::Buffer)] {
        &self.states
    }

    /// The packed state: O(rows + cols) per matrix, the tensor's length per vector.
    fn state_bytes(&self) -> u64 {
        self.state.size()
    }

    fn state_elements(&self) -> u64 {
        self.state_elements
    }
}

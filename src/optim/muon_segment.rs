//! Muon's segment of the GPU engine ([`crate::optim::rule::SegmentKind::NewtonSchulz`]):
//! momentum, Newton–Schulz on the batched matmul, apply. The rule itself (config, scalars,
//! CPU twin) is src/optim/muon.rs.

use super::book::{Book, SegmentPlan};
use super::muon::{
    ns_stages, MuonBatch, MuonConfig, MuonGpuTensor, MuonHyper, MuonTensor, NsPlace, MUON_APPLY,
    MUON_MOMENTUM,
};
use super::rule::{Rule, StateSpec};
use super::segment::{Dispatcher, GpuSegment};
use crate::arena::{ParamArena, SegmentLayout, TensorInfo};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::gpu_buffers::{range_binding as binding, storage_buffer};
use crate::matmul::{BatchedMatmul, MatmulProblem};
use crate::pipeline::Kernel;
use crate::shaders::FLAG_GRAD_SCALE;
use bytemuck::Zeroable;
use std::sync::Arc;

/// One batch of a Muon segment: matrices whose params, grads and momentum windows and
/// Newton–Schulz scratch each fit one storage binding.
#[derive(Debug)]
struct Batch {
    count: u32,
    grid: (u32, u32),
    uniform: wgpu::Buffer,
    scratch: wgpu::Buffer,
    /// (byte offset, byte size) of the params / grads window.
    p_window: (u64, u64),
    /// (byte offset, byte size) of the momentum window.
    b_window: (u64, u64),
    gram: [BatchedMatmul; 2],
    poly: BatchedMatmul,
    update: [BatchedMatmul; 2],
}

/// The GPU segment of Muon (see the module docs). Built once; a step writes the group and
/// tensor tables and records `batches × (2 + 3·ns_steps)` dispatches.
#[derive(Debug)]
pub(crate) struct MuonSegment {
    layout: SegmentLayout,
    momentum: Arc<Kernel>,
    apply: Arc<Kernel>,
    hypers: wgpu::Buffer,
    tensors: wgpu::Buffer,
    bufs: wgpu::Buffer,
    /// `momentum_buffer`'s spec with `bufs` (what a Lookahead state reset re-initializes).
    states: Vec<(StateSpec, wgpu::Buffer)>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    batches: Vec<Batch>,
    bind_groups: Vec<wgpu::BindGroup>,
    ns_steps: u32,
    infos: Vec<TensorInfo>,
    /// Per member: its offsets (the static part of its table row).
    places: Vec<[u32; 4]>,
    /// Reused every step.
    hyper_table: Vec<MuonHyper>,
    tensor_table: Vec<MuonGpuTensor>,
}

impl MuonSegment {
    pub(crate) fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        plan: &SegmentPlan,
        aux: &wgpu::Buffer,
        configs: &[MuonConfig],
    ) -> Result<Self> {
        let label = "muon";
        let first = configs.first().cloned().unwrap_or_default();
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
        let tensors = arena.layout().tensors();
        let infos: Vec<TensorInfo> = plan.members.iter().map(|&i| tensors[i].clone()).collect();
        let shape = |local: usize| -> (u32, u32) {
            match infos[local].shape.as_deref() {
                Some(&[r, c]) => (r as u32, c as u32),
                _ => (0, 0),
            }
        };
        let state_bytes = layout.state_bytes().max(16);
        if state_bytes > ctx.limits().max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "muon momentum_buffer".into(),
                bytes: state_bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        // Batches: consecutive members while every window and the scratch fit one binding.
        let window = |lo_elem: usize, hi_elem: usize| -> (u64, u64) {
            let lo = (lo_elem as u64 * 4) / align * align;
            (lo, hi_elem as u64 * 4 - lo)
        };
        let mut spans: Vec<(usize, usize)> = Vec::new(); // (first local, count)
        let mut start = 0usize;
        while start < infos.len() {
            let mut end = start;
            let mut scratch = 0u64;
            while end < infos.len() {
                let (r, c) = shape(end);
                let s = scratch + NsPlace::elements(r as u64, c as u64) * 4;
                let pw = window(infos[start].offset, infos[end].offset + infos[end].len);
                let so = layout.state_offsets();
                let bw = window(so[start], so[end] + infos[end].len);
                if s > cap || pw.1 > cap || bw.1 > cap || s / 4 > u32::MAX as u64 {
                    if end == start {
                        return Err(Error::BufferTooLarge {
                            what: format!(
                                "muon Newton–Schulz scratch and windows of tensor {:?}",
                                infos[end].name
                            ),
                            bytes: s.max(pw.1).max(bw.1),
                            limit: cap,
                        });
                    }
                    break;
                }
                scratch = s;
                end += 1;
            }
            spans.push((start, end - start));
            start = end;
        }
        let coef = first.ns_coefficients.map(|x| x as f32);
        let momentum = ctx.kernel(MUON_MOMENTUM)?;
        let apply = ctx.kernel(MUON_APPLY)?;
        let params = arena.params_buffer().clone();
        let grads = arena.grads_buffer().clone();
        let (hypers, tensor_buf, bufs) = ctx.scoped(|| {
            let hypers = storage_buffer(
                ctx,
                &format!("{label} hypers"),
                (plan.groups.len().max(1) * std::mem::size_of::<MuonHyper>()) as u64,
            );
            let tensor_buf = storage_buffer(
                ctx,
                &format!("{label} tensors"),
                (infos.len().max(1) * std::mem::size_of::<MuonGpuTensor>()) as u64,
            );
            let bufs = storage_buffer(ctx, &format!("{label} momentum_buffer"), state_bytes);
            (hypers, tensor_buf, bufs)
        })?;
        let mut places = vec![[0u32; 4]; infos.len()];
        let mut batches = Vec::with_capacity(spans.len());
        for &(s0, count) in &spans {
            let so = layout.state_offsets();
            let last = s0 + count - 1;
            let p_window = window(infos[s0].offset, infos[last].offset + infos[last].len);
            let b_window = window(so[s0], so[last] + infos[last].len);
            let mut base = 0u32;
            let mut gram = [Vec::new(), Vec::new()];
            let mut poly = Vec::new();
            let mut update = [Vec::new(), Vec::new()];
            for local in s0..s0 + count {
                let (r, c) = shape(local);
                let at = NsPlace::at(base, r, c);
                let st = ns_stages(r, c, at, coef);
                for p in 0..2 {
                    gram[p].push(st.gram[p]);
                    update[p].push(st.update[p]);
                }
                poly.push(st.poly);
                places[local] = [
                    (infos[local].offset as u64 - p_window.0 / 4) as u32,
                    (so[local] as u64 - b_window.0 / 4) as u32,
                    at.x[0],
                    at.x[first.ns_steps as usize % 2],
                ];
                base += NsPlace::elements(r as u64, c as u64) as u32;
            }
            // Bindings cannot be empty; a window past the buffer's end is clipped to it.
            let fit = |buf: &wgpu::Buffer, (off, size): (u64, u64)| {
                (off, size.max(16).min(buf.size() - off))
            };
            let p_window = fit(&params, p_window);
            let b_window = fit(&bufs, b_window);
            let scratch = ctx.scoped(|| {
                storage_buffer(ctx, &format!("{label} scratch"), (base as u64 * 4).max(16))
            })?;
            let uniform = ctx.scoped(|| {
                let u = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} batch")),
                    size: 16,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let row = MuonBatch {
                    first: s0 as u32,
                    count: count as u32,
                    pad0: 0,
                    pad1: 0,
                };
                ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&row));
                u
            })?;
            let stage = |probs: &[MatmulProblem]| BatchedMatmul::new(ctx, probs, &scratch);
            batches.push(Batch {
                count: count as u32,
                grid: dispatch::grid(count as u32, ctx.max_workgroups_per_dim()),
                p_window,
                b_window,
                gram: [stage(&gram[0])?, stage(&gram[1])?],
                poly: stage(&poly)?,
                update: [stage(&update[0])?, stage(&update[1])?],
                uniform,
                scratch,
            });
        }
        let mut seg = Self {
            layout,
            momentum,
            apply,
            hypers,
            tensors: tensor_buf,
            states: MuonConfig::default()
                .states()
                .into_iter()
                .map(|st| (st, bufs.clone()))
                .collect(),
            bufs,
            params,
            grads,
            batches,
            bind_groups: Vec::new(),
            ns_steps: first.ns_steps,
            hyper_table: Vec::with_capacity(plan.groups.len()),
            tensor_table: Vec::with_capacity(infos.len()),
            infos,
            places,
        };
        let bgs = ctx.scoped(|| seg.bind_groups(ctx, aux))?;
        seg.bind_groups = bgs;
        Ok(seg)
    }
}

impl GpuSegment for MuonSegment {
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool) {
        let extra_flags = if grad_scale { FLAG_GRAD_SCALE } else { 0 };
        book.segment_hypers::<MuonConfig>(seg, extra_flags, &mut self.hyper_table);
        self.tensor_table.clear();
        for local in 0..book.segments[seg].members.len() {
            let step = book.member_step::<MuonConfig>(
                seg,
                local,
                self.layout.ranges()[local],
                &self.infos[local],
            );
            let [p_off, b_off, x0_off, xf_off] = self.places[local];
            self.tensor_table.push(MuonGpuTensor {
                step: step.unwrap_or_else(MuonTensor::zeroed),
                p_off,
                b_off,
                x0_off,
                xf_off,
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
        // The momentum and apply dispatches go through `d` (the AMP guard gates them: a
        // skipped step changes neither the momentum buffers nor the params); the Newton–Schulz
        // stages only rewrite the scratch, so they run either way.
        for (b, bg) in self.batches.iter().zip(&self.bind_groups) {
            if b.count == 0 {
                continue;
            }
            pass.set_pipeline(&self.momentum.pipeline);
            pass.set_bind_group(0, bg, &[]);
            d.dispatch(pass, b.grid);
            for it in 0..self.ns_steps as usize {
                b.gram[it % 2].record(pass);
                b.poly.record(pass);
                b.update[it % 2].record(pass);
            }
            pass.set_pipeline(&self.apply.pipeline);
            pass.set_bind_group(0, bg, &[]);
            d.dispatch(pass, b.grid);
        }
    }

    fn dispatch_grids(&self) -> Vec<(u32, u32)> {
        self.batches
            .iter()
            .filter(|b| b.count > 0)
            .flat_map(|b| [b.grid, b.grid])
            .collect()
    }

    fn states(&self) -> &[(StateSpec, wgpu::Buffer)] {
        &self.states
    }

    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup> {
        self.batches
            .iter()
            .map(|b| {
                let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("muon"),
                    layout: &self.momentum.layout,
                    entries: &[
                        entry(0, self.hypers.as_entire_binding()),
                        entry(1, b.uniform.as_entire_binding()),
                        entry(2, self.tensors.as_entire_binding()),
                        entry(3, aux.as_entire_binding()),
                        entry(4, binding(&self.params, b.p_window)),
                        entry(5, binding(&self.grads, b.p_window)),
                        entry(6, binding(&self.bufs, b.b_window)),
                        entry(7, b.scratch.as_entire_binding()),
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
        (name == "momentum_buffer").then_some(&self.bufs)
    }

    /// The momentum buffers and the Newton–Schulz scratch.
    fn state_bytes(&self) -> u64 {
        self.bufs.size() + self.batches.iter().map(|b| b.scratch.size()).sum::<u64>()
    }

    fn dispatches(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| {
                let stages = |m: &BatchedMatmul| usize::from(m.tiles() > 0);
                let per_iter =
                    |p: usize| stages(&b.gram[p]) + stages(&b.poly) + stages(&b.update[p]);
                2 + (0..self.ns_steps as usize)
                    .map(|it| per_iter(it % 2))
                    .sum::<usize>()
            })
            .sum()
    }
}

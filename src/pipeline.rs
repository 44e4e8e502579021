//! [`PipelineCache`]: one compute pipeline and explicit bind group layout per [`KernelId`],
//! created on first use and shared by every optimizer on the context. Creation happens at
//! optimizer construction, never per step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::context::GpuContext;
use crate::error::Result;
use crate::shaders::{BindKind, KernelId};

/// A ready-to-dispatch kernel.
#[derive(Debug)]
pub struct Kernel {
    /// Explicit layout, so bind groups can be built before the first dispatch.
    pub layout: wgpu::BindGroupLayout,
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
}

/// Kernel identity to pipeline; a `HashMap` behind a lock, double-checked.
#[derive(Debug, Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<KernelId, Arc<Kernel>>>,
    /// Layouts by binding list, so the kernels of one family share one layout object and a
    /// bind group built for one serves them all.
    layouts: Mutex<HashMap<Vec<(u32, BindKind)>, wgpu::BindGroupLayout>>,
}

impl PipelineCache {
    /// The kernel, compiled on first request.
    pub fn get(&self, ctx: &GpuContext, id: KernelId) -> Result<Arc<Kernel>> {
        if let Some(k) = self.lock().get(&id) {
            return Ok(k.clone());
        }
        // Build outside the lock: shader compilation can be slow, and a racing builder only
        // wastes work (the first insert wins).
        let k = Arc::new(build(ctx, id, self)?);
        Ok(self.lock().entry(id).or_insert(k).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KernelId, Arc<Kernel>>> {
        // A panic while holding this lock cannot leave the map inconsistent (inserts are
        // atomic), so a poisoned lock is still safe to use.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn build(ctx: &GpuContext, id: KernelId, cache: &PipelineCache) -> Result<Kernel> {
    let device = ctx.device();
    let label = Some(id.entry_point());
    ctx.scoped(|| {
        let bindings = id.bindings();
        let mut layouts = cache.layouts.lock().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .copied()
            .map(|(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        BindKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindKind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        BindKind::ReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = layouts
            .entry(bindings)
            .or_insert_with(|| {
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label,
                    entries: &entries,
                })
            })
            .clone();
        drop(layouts);
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label,
            source: wgpu::ShaderSource::Wgsl(id.source().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label,
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(id.entry_point()),
            compilation_options: Default::default(),
            cache: None,
        });
        Kernel { layout, pipeline }
    })
}

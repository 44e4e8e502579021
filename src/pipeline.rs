//! [`PipelineCache`]: one compute pipeline per (kernel, `override` constants) key, with explicit
//! bind group layouts shared by kernels of one binding convention. Created on first use and
//! shared by every object on the context; creation happens at construction, never per step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::shaders::{BindKind, KernelDef};

/// A ready-to-dispatch kernel.
#[derive(Debug)]
pub struct Kernel {
    /// Explicit layout, so bind groups can be built before the first dispatch.
    pub layout: wgpu::BindGroupLayout,
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
}

/// A pipeline's identity: the kernel and the values of its WGSL `override` constants
/// (as f64 bits, so the key is hashable), in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// The kernel.
    pub kernel: KernelDef,
    /// `(override name, value bits)`.
    pub constants: Vec<(&'static str, u64)>,
}

impl PipelineKey {
    /// The kernel with its source's default constants.
    pub fn plain(kernel: KernelDef) -> Self {
        Self {
            kernel,
            constants: Vec::new(),
        }
    }

    /// The kernel with `override` constants set.
    pub fn with_constants(kernel: KernelDef, constants: &[(&'static str, f64)]) -> Self {
        Self {
            kernel,
            constants: constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        }
    }
}

/// Pipeline key to pipeline; a `HashMap` behind a lock, double-checked.
#[derive(Debug, Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    /// Layouts by binding list, so the kernels of one family share one layout object and a
    /// bind group built for one serves them all.
    layouts: Mutex<HashMap<Vec<(u32, BindKind)>, wgpu::BindGroupLayout>>,
}

impl PipelineCache {
    /// The pipeline for `key` if it was compiled before.
    pub(crate) fn cached(&self, key: &PipelineKey) -> Option<Arc<Kernel>> {
        self.lock().get(key).cloned()
    }

    /// Keeps a freshly built pipeline; when a racing builder inserted one first, that one wins
    /// (so every user of a key shares one object) and is returned.
    pub(crate) fn insert(&self, key: PipelineKey, k: Kernel) -> Arc<Kernel> {
        self.lock()
            .entry(key)
            .or_insert_with(|| Arc::new(k))
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PipelineKey, Arc<Kernel>>> {
        // A panic while holding this lock cannot leave the map inconsistent (inserts are
        // atomic), so a poisoned lock is still safe to use.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles `key` on `device` (the caller scopes the device's errors: see
    /// `GpuContext::kernel_keyed`, which owns the cache, so this floor needs no context).
    pub(crate) fn build(&self, device: &wgpu::Device, key: &PipelineKey) -> Kernel {
        build(device, key, self)
    }
}

fn build(device: &wgpu::Device, key: &PipelineKey, cache: &PipelineCache) -> Kernel {
    let id = key.kernel;
    let label = Some(id.entry);
    let constants: Vec<(&str, f64)> = key
        .constants
        .iter()
        .map(|&(n, bits)| (n, f64::from_bits(bits)))
        .collect();
    {
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
            source: wgpu::ShaderSource::Wgsl(id.source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label,
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(id.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                ..Default::default()
            },
            cache: None,
        });
        Kernel { layout, pipeline }
    }
}

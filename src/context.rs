//! [`GpuContext`]: the device, queue, granted limits and pipeline cache that every arena and
//! optimizer shares. Build it headless with [`GpuContext::new`], or wrap an application's own
//! device with [`GpuContext::from_device`] so the optimizer lives in the caller's training loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::pipeline::{Kernel, PipelineCache, PipelineKey};
use crate::shaders::KernelDef;
use crate::tune::{TuneReport, Tuner, Tuning};

/// Environment variable that picks an adapter: a case-insensitive substring of the adapter name
/// (`llvmpipe`, `nvidia`), or a backend name (`vulkan`, `metal`, `dx12`, `gl`).
pub const ADAPTER_ENV: &str = "WGPU_OPTIM_ADAPTER";

/// Options for [`GpuContext::with_options`].
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Adapter filter, as [`ADAPTER_ENV`]. `None` reads the environment variable.
    pub adapter: Option<String>,
    /// Cap on the bytes bound per storage binding, below the device's own limit. Arenas larger
    /// than this are processed in windows; tests set it low so the windowing path always runs.
    pub max_binding_bytes: Option<u64>,
    /// Cap on workgroups in a dispatch's x dimension, below the device's own limit (tests set it
    /// low so the 2-D spill path runs on small arenas; y keeps the device limit).
    pub max_workgroups_per_dim: Option<u32>,
    /// How elementwise kernels choose their work split ([`Tuning`]). `None` reads
    /// [`crate::tune::TUNE_ENV`] (unset: [`Tuning::Auto`]).
    pub tuning: Option<Tuning>,
    /// Directory of the kernel-shape cache. `None` means [`crate::tune::default_cache_dir`];
    /// change it later with [`GpuContext::set_tune_cache_dir`].
    pub tune_cache_dir: Option<std::path::PathBuf>,
}

/// Device, queue and everything derived from them. A cheap handle: clones share one device,
/// and every arena, optimizer, reducer and clipper keeps the clone it was built with, so it can
/// never write into another context's buffers.
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    max_binding_bytes: u64,
    max_workgroups_per_dim: u32,
    pipelines: PipelineCache,
    /// Kernel shapes: policy, cache, choices (src/tune.rs).
    tuner: Tuner,
    /// Set by the device-lost callback, which wgpu runs from `poll` (also after
    /// `Device::destroy`); checked by every call.
    lost: Arc<Mutex<Option<String>>>,
    /// The first wgpu error no error scope caught (wgpu's default handler would panic on it),
    /// returned by the next call that checks the context.
    fault: Arc<Mutex<Option<Error>>>,
    /// The instance the context opened its device from (`None` for `from_device`), for
    /// [`GpuContext::resource_counts`].
    instance: Option<wgpu::Instance>,
}

/// How many wgpu objects of each kind are alive (wgpu-core's registries), to check that a
/// training loop creates nothing per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceCounts {
    /// Buffers.
    pub buffers: usize,
    /// Bind groups.
    pub bind_groups: usize,
    /// Compute pipelines.
    pub compute_pipelines: usize,
    /// Shader modules.
    pub shader_modules: usize,
    /// Command encoders.
    pub command_encoders: usize,
    /// Command buffers.
    pub command_buffers: usize,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("id", &self.inner.id)
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .field("max_binding_bytes", &self.inner.max_binding_bytes)
            .finish()
    }
}

static NEXT_CONTEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Preference order when no filter is given: real GPUs first, software adapters last.
fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn matches_filter(info: &wgpu::AdapterInfo, filter: &str) -> bool {
    let f = filter.to_ascii_lowercase();
    info.name.to_ascii_lowercase().contains(&f)
        || format!("{:?}", info.backend).to_ascii_lowercase() == f
        || info.backend.to_str() == f
}

impl GpuContext {
    /// Picks an adapter headlessly (honouring [`ADAPTER_ENV`]) and opens a device on it.
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// As [`GpuContext::new`], with explicit options.
    pub fn with_options(opts: ContextOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let filter = opts
            .adapter
            .clone()
            .or_else(|| std::env::var(ADAPTER_ENV).ok())
            .filter(|s| !s.trim().is_empty());
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                filter
                    .as_deref()
                    .is_none_or(|f| matches_filter(&a.get_info(), f))
            })
            .collect();
        candidates.sort_by_key(|a| type_rank(a.get_info().device_type));
        let adapter = candidates
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAdapter {
                detail: match &filter {
                    Some(f) => format!("none of {seen:?} matches {ADAPTER_ENV}={f:?}"),
                    None if seen.is_empty() => "no Vulkan, Metal or DX12 adapter".to_string(),
                    None => format!("saw {seen:?}"),
                },
            })?;

        // Ask for everything the adapter offers: the default limits cap a storage binding at
        // 128 MiB and a buffer at 256 MiB, far below what a real GPU (or lavapipe) allows.
        let limits = adapter.limits();
        // SHADER_F16 where offered: f16 arenas then take the native path (src/precision.rs).
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::SHADER_F16;
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-optim"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let mut max_binding_bytes = None;
        let mut max_workgroups = None;
        if let Some(cap) = opts.max_binding_bytes {
            max_binding_bytes = Some(cap);
        }
        if let Some(cap) = opts.max_workgroups_per_dim {
            max_workgroups = Some(cap.max(1));
        }
        let tuning = match opts.tuning {
            Some(t) => t,
            None => Tuning::from_env()?,
        };
        let cache_dir = opts.tune_cache_dir.or_else(crate::tune::default_cache_dir);
        let mut ctx = Self::build(
            device,
            queue,
            adapter.get_info(),
            max_binding_bytes,
            max_workgroups,
            (tuning, cache_dir),
        );
        if let Some(inner) = Arc::get_mut(&mut ctx.inner) {
            inner.instance = Some(instance);
        }
        Ok(ctx)
    }

    /// Wraps a device the caller already owns (its limits are read back from the device, so
    /// request generous storage-binding limits when creating it). The context installs the
    /// device's lost callback, so that after a loss every call returns [`Error::DeviceLost`].
    /// Kernel shapes follow [`crate::tune::TUNE_ENV`] (an unparsable value means
    /// [`Tuning::Auto`]; [`GpuContext::set_tuning`] changes it) and the default cache directory.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let tuning = Tuning::from_env().unwrap_or_default();
        Self::build(
            device,
            queue,
            info,
            None,
            None,
            (tuning, crate::tune::default_cache_dir()),
        )
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        binding_cap: Option<u64>,
        workgroup_cap: Option<u32>,
        (tuning, cache_dir): (Tuning, Option<std::path::PathBuf>),
    ) -> Self {
        let limits = device.limits();
        let features = device.features();
        // Bindings are whole vec4s; keep the cap a multiple of 16 bytes.
        let mut max_binding_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            & !15;
        if let Some(cap) = binding_cap {
            max_binding_bytes = max_binding_bytes.min(cap & !15);
        }
        let mut max_workgroups_per_dim = limits.max_compute_workgroups_per_dimension;
        if let Some(cap) = workgroup_cap {
            max_workgroups_per_dim = max_workgroups_per_dim.min(cap);
        }
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = flag.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(format!("{reason:?}: {message}"));
        });
        // Errors outside our error scopes (a failed submission, an allocation the driver
        // refuses lazily) would hit wgpu's default handler, which panics: keep them instead,
        // and return the first from the next call that checks the context.
        let fault = Arc::new(Mutex::new(None));
        let slot = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(match e {
                    wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
                    _ => Error::Validation(e.to_string()),
                });
            }
        }));
        Self {
            inner: Arc::new(Inner {
                id: NEXT_CONTEXT_ID.fetch_add(1, Ordering::Relaxed),
                max_workgroups_per_dim,
                max_binding_bytes,
                pipelines: PipelineCache::default(),
                tuner: Tuner::new(&info, tuning, cache_dir),
                device,
                queue,
                info,
                limits,
                features,
                lost,
                fault,
                instance: None,
            }),
        }
    }

    /// Live wgpu objects of the whole instance (every context opened from it), or `None` for a
    /// context built with [`GpuContext::from_device`] (whose instance it does not know).
    pub fn resource_counts(&self) -> Option<ResourceCounts> {
        let report = self.inner.instance.as_ref()?.generate_report()?;
        let h = report.hub_report();
        Some(ResourceCounts {
            buffers: h.buffers.num_allocated,
            bind_groups: h.bind_groups.num_allocated,
            compute_pipelines: h.compute_pipelines.num_allocated,
            shader_modules: h.shader_modules.num_allocated,
            command_encoders: h.command_encoders.num_allocated,
            command_buffers: h.command_buffers.num_allocated,
        })
    }

    /// Unique id of this context (clones share it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// `Err(DeviceLost)` once the device is lost or destroyed; every public call checks it
    /// first, so nothing is recorded on a dead device. It also returns, once, the first wgpu
    /// error that no error scope caught (`Validation` or `OutOfMemory`: a caller's invalid
    /// command on this device, or a fault the driver reports late), which wgpu would otherwise
    /// turn into a panic.
    pub fn check_alive(&self) -> Result<()> {
        // wgpu reports a loss (or a `Device::destroy`) only from `poll`: a non-blocking poll
        // here makes the loss visible to the very next call. It waits for nothing.
        let _ = self.inner.device.poll(wgpu::PollType::Poll);
        let lost = self.inner.lost.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &*lost {
            return Err(Error::DeviceLost(why.clone()));
        }
        drop(lost);
        let mut fault = self.inner.fault.lock().unwrap_or_else(|p| p.into_inner());
        match fault.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Adapter name, backend, device type and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The limits the device was granted.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The features the device was granted.
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// Bytes one storage binding may cover (the device limit, or the smaller cap in the options).
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.max_binding_bytes
    }

    /// Workgroups one dispatch dimension may hold.
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.inner.max_workgroups_per_dim
    }

    /// Whether GPU timestamp queries can be written between passes.
    pub fn supports_timestamps(&self) -> bool {
        self.inner
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Blocks until all submitted work has finished.
    pub fn wait(&self) -> Result<()> {
        self.check_alive()?;
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Map(e.to_string()))
    }

    /// The kernel with its source's default constants, compiled on first request.
    pub(crate) fn kernel(&self, kernel: KernelDef) -> Result<Arc<Kernel>> {
        self.kernel_keyed(PipelineKey::plain(kernel))
    }

    /// The pipeline for `key`, compiled on first request (device errors scoped: a shader the
    /// driver refuses is a typed error). Built outside the cache's lock: shader compilation can
    /// be slow, and a racing builder only wastes work.
    pub(crate) fn kernel_keyed(&self, key: PipelineKey) -> Result<Arc<Kernel>> {
        let cache = &self.inner.pipelines;
        if let Some(k) = cache.cached(&key) {
            return Ok(k);
        }
        let k = self.scoped(|| cache.build(self.device(), &key))?;
        Ok(cache.insert(key, k))
    }

    pub(crate) fn tuner(&self) -> &Tuner {
        &self.inner.tuner
    }

    /// Sets how elementwise kernels choose their work split from now on. Objects already built
    /// keep their pipelines; every shape gives bit-identical results, so mixing is harmless.
    pub fn set_tuning(&self, tuning: Tuning) {
        self.inner.tuner.set_tuning(tuning);
    }

    /// The kernel-shape policy.
    pub fn tuning(&self) -> Tuning {
        self.inner.tuner.tuning()
    }

    /// Moves the kernel-shape cache to `dir` (`None`: no cache; shapes are then timed in every
    /// process under [`Tuning::Auto`]). A directory that cannot be read or written is not an
    /// error; [`GpuContext::tune_report`] says what happened.
    pub fn set_tune_cache_dir(&self, dir: Option<std::path::PathBuf>) {
        self.inner.tuner.set_cache_dir(dir);
    }

    /// The policy, the cache file and what became of it, and every kernel shape chosen so far
    /// with where it came from and the timings behind it.
    pub fn tune_report(&self) -> TuneReport {
        self.inner.tuner.report()
    }

    /// Runs `f` inside validation and out-of-memory error scopes, turning a wgpu error into
    /// [`Error`] instead of wgpu's default panic. Used around object creation, never per step.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_alive()?;
        let oom = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val_err = pollster::block_on(val.pop());
        let oom_err = pollster::block_on(oom.pop());
        if let Some(e) = val_err {
            return Err(Error::Validation(e.to_string()));
        }
        if let Some(e) = oom_err {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        self.check_alive()?;
        Ok(out)
    }
}

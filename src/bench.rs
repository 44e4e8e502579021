//! Measurement tools for `optbench`: the streaming-copy baseline kernel
//! ([`CopyKernel`], `shaders/copy.wgsl`), a step timer that uses GPU timestamp queries when the
//! device has them and host wall clock around a queue wait otherwise ([`StepTimer`]), order
//! statistics ([`Summary`]) and the host memcpy bandwidth ([`host_memcpy`]).
//!
//! Only with the `bench` cargo feature (off by default), which optbench turns on.
//!
//! Everything here allocates at construction only: timing a batch creates command encoders
//! (one per submission, as any training loop does) and nothing else.

use std::time::Instant;

use serde::Serialize;

use std::sync::Arc;

use crate::autotune as tuner;
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::pipeline::{Kernel, PipelineKey};
use crate::tune::{KernelShape, ShapeChoice};

/// The copy kernel's WGSL source (`shaders/copy.wgsl`).
pub const COPY_WGSL: &str = include_str!("../shaders/copy.wgsl");
/// The copy kernel's entry point; also the label of every wgpu object made for it.
pub const COPY_ENTRY: &str = "copy_vec4";
/// Bytes a copy moves per f32 element (one read, one write).
pub const COPY_BYTES_PER_ELEMENT: u64 = 8;

/// Work split of the copy kernel (WGSL overrides `WG_SIZE` and `VEC_PER_INV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyConfig {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// vec4s each invocation copies (strided by the workgroup width).
    pub vec4_per_invocation: u32,
}

impl Default for CopyConfig {
    /// The fastest split measured on lavapipe: 512 invocations x 2 vec4s (`optbench
    /// tune-copy`, see PERFORMANCE.md). Devices that cap workgroups below 512 invocations get
    /// the same 1024 vec4s per workgroup from [`CopyConfig::for_device`].
    fn default() -> Self {
        Self {
            workgroup_size: 512,
            vec4_per_invocation: 2,
        }
    }
}

impl CopyConfig {
    /// vec4s one workgroup copies.
    pub fn vec4_per_workgroup(&self) -> u64 {
        self.workgroup_size as u64 * self.vec4_per_invocation as u64
    }

    /// The default split, narrowed to the device's workgroup limits (keeping the vec4s per
    /// workgroup) when it allows fewer than 512 invocations per workgroup.
    pub fn for_device(ctx: &GpuContext) -> Self {
        Self::for_limits(ctx.limits())
    }

    /// [`CopyConfig::for_device`] for explicit limits.
    pub fn for_limits(lim: &wgpu::Limits) -> Self {
        let d = Self::default();
        let cap = lim
            .max_compute_invocations_per_workgroup
            .min(lim.max_compute_workgroup_size_x)
            .max(1);
        if d.workgroup_size <= cap {
            return d;
        }
        // Largest power of two within the cap.
        let wg = 1u32 << (31 - cap.leading_zeros());
        let per_wg = d.vec4_per_workgroup() as u32;
        Self {
            workgroup_size: wg,
            vec4_per_invocation: per_wg.div_ceil(wg),
        }
    }
}

impl From<CopyConfig> for KernelShape {
    fn from(c: CopyConfig) -> Self {
        Self {
            workgroup_size: c.workgroup_size,
            vec4_per_invocation: c.vec4_per_invocation,
        }
    }
}

impl From<KernelShape> for CopyConfig {
    fn from(s: KernelShape) -> Self {
        Self {
            workgroup_size: s.workgroup_size,
            vec4_per_invocation: s.vec4_per_invocation,
        }
    }
}

/// Times every candidate split of the copy on two scratch buffers of `elements` f32s; a
/// split that does not build is skipped, the device's default split must.
fn time_copy(ctx: &GpuContext, elements: usize) -> Result<ShapeChoice> {
    let bytes = elements.div_ceil(4) as u64 * 16;
    let (src, dst) = ctx.scoped(|| {
        let buf = |name: &str| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{COPY_ENTRY} tune {name}")),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        (buf("src"), buf("dst"))
    })?;
    let candidates = tuner::build_candidates(ctx, default_split(ctx), |shape| {
        let job =
            CopyKernel::with_config(ctx, shape.into())?.bind(ctx, &src, &dst, elements as u64)?;
        Ok(move || {
            tuner::submit(ctx, COPY_ENTRY, |e| job.encode(e));
            Ok(())
        })
    })?;
    tuner::time_candidates(ctx, COPY_ENTRY, elements, candidates)
}

/// [`CopyConfig::for_device`]: the split the untimed policies use.
fn default_split(ctx: &GpuContext) -> KernelShape {
    CopyConfig::for_device(ctx).into()
}

/// Mirrors `CopyWindow` in copy.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyWindowUniform {
    vec_count: u32,
    tail_lanes: u32,
    pad: [u32; 2],
}

/// The streaming-copy kernel: pipeline and bind group layout for one [`CopyConfig`].
#[derive(Debug)]
pub struct CopyKernel {
    config: CopyConfig,
    kernel: Arc<Kernel>,
}

impl CopyKernel {
    /// The kernel with the default (tuned) work split, fitted to the device's limits.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        Self::with_config(ctx, CopyConfig::for_device(ctx))
    }

    /// The kernel with the adapter's fastest split, the honest roofline: under
    /// [`crate::tune::Tuning::Auto`] the candidates ([`KernelShape::candidates`]) are timed
    /// on a scratch copy (the tuner's size for the adapter) the first time, and the winner
    /// cached like every kernel's; a pinned shape applies here too, and
    /// the policies without timing fall back to [`CopyConfig::for_device`].
    pub fn tuned(ctx: &GpuContext) -> Result<Self> {
        let shape = tuner::resolve_or_time(ctx, crate::shaders::COPY, default_split(ctx), |n| {
            time_copy(ctx, n)
        })?;
        Self::with_config(ctx, shape.into())
    }

    /// Times the copy's candidate splits now, whatever the policy, and records the fastest
    /// (in memory and in the cache): `optbench tune`.
    pub fn tune(ctx: &GpuContext, elements: Option<usize>) -> Result<ShapeChoice> {
        tuner::tune_now(ctx, crate::shaders::COPY, elements, |n| time_copy(ctx, n))
    }

    /// The kernel with an explicit work split (for tuning).
    pub fn with_config(ctx: &GpuContext, config: CopyConfig) -> Result<Self> {
        let lim = ctx.limits();
        if config.workgroup_size == 0
            || config.workgroup_size > lim.max_compute_invocations_per_workgroup
            || config.workgroup_size > lim.max_compute_workgroup_size_x
        {
            return Err(Error::InvalidConfig(
                "copy workgroup size must be in 1..=the device's max invocations per workgroup",
            ));
        }
        if config.vec4_per_invocation == 0 {
            return Err(Error::InvalidConfig(
                "copy vec4s per invocation must be >= 1",
            ));
        }
        // Through the context's pipeline cache, keyed by the kernel and its override
        // constants, like every other kernel.
        let key = PipelineKey::with_constants(
            crate::shaders::COPY,
            &[
                ("WG_SIZE", config.workgroup_size as f64),
                ("VEC_PER_INV", config.vec4_per_invocation as f64),
            ],
        );
        let kernel = ctx.kernel_keyed(key)?;
        Ok(Self { config, kernel })
    }

    /// The work split.
    pub fn config(&self) -> CopyConfig {
        self.config
    }

    /// Prepares a copy of the first `len` f32s of `src` into `dst`: one bind group and one
    /// dispatch per binding window (copies over the device's storage binding size are split),
    /// with grids over 65 535 workgroups spilled into y. Both buffers must hold at least
    /// `len` rounded up to whole vec4s; elements of `dst` past `len` are never written.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        len: u64,
    ) -> Result<CopyJob> {
        let vecs = len.div_ceil(4);
        for (what, buf) in [("copy source", src), ("copy destination", dst)] {
            if buf.size() < vecs * 16 {
                return Err(Error::LengthMismatch {
                    what: what.into(),
                    expected: (vecs * 4) as usize,
                    got: (buf.size() / 4) as usize,
                });
            }
        }
        // Windows start on the storage offset alignment and hold whole vec4s.
        let align = (ctx.limits().min_storage_buffer_offset_alignment as u64).max(16);
        let window_vecs = (ctx.max_binding_bytes() / align * align) / 16;
        if window_vecs == 0 {
            return Err(Error::BufferTooLarge {
                what: "one copy window".into(),
                bytes: align,
                limit: ctx.max_binding_bytes(),
            });
        }
        let windows: Vec<(u64, u64)> = (0..vecs.div_ceil(window_vecs))
            .map(|w| {
                let start = w * window_vecs;
                (start, (vecs - start).min(window_vecs))
            })
            .collect();
        let uniform_align = (ctx.limits().min_uniform_buffer_offset_alignment as u64).max(16);
        let device = ctx.device();
        let per_wg = self.config.vec4_per_workgroup();
        ctx.scoped(|| {
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(COPY_ENTRY),
                size: uniform_align * windows.len().max(1) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut bind_groups = Vec::with_capacity(windows.len());
            let mut grids = Vec::with_capacity(windows.len());
            for (i, &(start, count)) in windows.iter().enumerate() {
                let last = i + 1 == windows.len();
                let tail = if last && len % 4 != 0 { len % 4 } else { 4 };
                let u = CopyWindowUniform {
                    vec_count: count as u32,
                    tail_lanes: tail as u32,
                    pad: [0; 2],
                };
                let at = uniform_align * i as u64;
                ctx.queue()
                    .write_buffer(&uniform, at, bytemuck::bytes_of(&u));
                let window = |buffer| {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: start * 16,
                        size: std::num::NonZeroU64::new(count * 16),
                    })
                };
                bind_groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(COPY_ENTRY),
                    layout: &self.kernel.layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniform,
                                offset: at,
                                size: std::num::NonZeroU64::new(16),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: window(src),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: window(dst),
                        },
                    ],
                }));
                let groups = u32::try_from(count.div_ceil(per_wg)).unwrap_or(u32::MAX);
                grids.push(dispatch::grid(groups, ctx.max_workgroups_per_dim()));
            }
            CopyJob {
                pipeline: self.kernel.pipeline.clone(),
                _uniform: uniform,
                bind_groups,
                grids,
                len,
            }
        })
    }
}

/// A prepared copy (see [`CopyKernel::bind`]); recording it allocates nothing.
#[derive(Debug)]
pub struct CopyJob {
    pipeline: wgpu::ComputePipeline,
    _uniform: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    len: u64,
}

impl CopyJob {
    /// Records the copy into `encoder` (one compute pass, one dispatch per window).
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        if self.len == 0 {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(COPY_ENTRY),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        for (bg, &(x, y)) in self.bind_groups.iter().zip(&self.grids) {
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    /// Elements copied.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the copy is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes moved per copy (read + write).
    pub fn bytes(&self) -> u64 {
        self.len * COPY_BYTES_PER_ELEMENT
    }

    /// Dispatches per copy (binding windows).
    pub fn dispatches(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.grids.len()
        }
    }

    /// `(x, y)` workgroup grid of each dispatch.
    pub fn grids(&self) -> &[(u32, u32)] {
        &self.grids
    }
}

/// How step times are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// GPU timestamp queries written into the command encoders around a batch of steps.
    GpuTimestamps,
    /// Host wall clock from the first encode to the end of a queue wait.
    WallClock,
}

impl TimerKind {
    /// A one-line description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            TimerKind::GpuTimestamps => {
                "GPU timestamp queries (encoder-level, around each batch of queued steps)"
            }
            TimerKind::WallClock => {
                "host wall clock around each batch of queued steps and one queue wait"
            }
        }
    }
}

/// Which timer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerChoice {
    /// GPU timestamps when the device has `TIMESTAMP_QUERY` and
    /// `TIMESTAMP_QUERY_INSIDE_ENCODERS`, wall clock otherwise.
    #[default]
    Auto,
    /// GPU timestamps; an error without them.
    Gpu,
    /// Host wall clock.
    Wall,
}

/// Whether the device can write timestamps between passes in a command encoder.
pub fn encoder_timestamps_supported(ctx: &GpuContext) -> bool {
    ctx.supports_timestamps()
        && ctx
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
}

#[derive(Debug)]
struct Stamps {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

/// The time of one batch of queued steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchTime {
    /// Steps in the batch.
    pub steps: u32,
    /// Host wall clock for the whole batch, in seconds (first encode to end of the wait).
    pub wall_s: f64,
    /// GPU time between the timestamps before the first step and after the last, in seconds.
    pub gpu_s: Option<f64>,
}

impl BatchTime {
    /// Seconds per step by the timer in use (GPU time when present, wall clock otherwise).
    pub fn per_step_s(&self) -> f64 {
        self.gpu_s.unwrap_or(self.wall_s) / self.steps.max(1) as f64
    }

    /// Wall-clock seconds per step.
    pub fn wall_per_step_s(&self) -> f64 {
        self.wall_s / self.steps.max(1) as f64
    }
}

/// Times batches of steps: every step is recorded into its own command encoder and submitted
/// (the optimizers write their per-step scalar tables with `queue.write_buffer`, which takes
/// effect at the next submit), the batch is waited for once, and the batch time is divided by
/// the step count. With GPU timestamps, one is written at the start of the first encoder and
/// one at the end of the last, resolved and read back after the wait.
#[derive(Debug)]
pub struct StepTimer {
    kind: TimerKind,
    stamps: Option<Stamps>,
}

impl StepTimer {
    /// Creates the query set and readback buffers (GPU timestamps) or nothing (wall clock).
    pub fn new(ctx: &GpuContext, choice: TimerChoice) -> Result<Self> {
        let gpu = match choice {
            TimerChoice::Wall => false,
            TimerChoice::Auto => encoder_timestamps_supported(ctx),
            TimerChoice::Gpu => {
                if !encoder_timestamps_supported(ctx) {
                    return Err(Error::InvalidConfig(
                        "GPU timestamps requested, but the device lacks TIMESTAMP_QUERY \
                         and TIMESTAMP_QUERY_INSIDE_ENCODERS",
                    ));
                }
                true
            }
        };
        if !gpu {
            return Ok(Self {
                kind: TimerKind::WallClock,
                stamps: None,
            });
        }
        let label = Some("optbench step timer");
        let device = ctx.device();
        let stamps = ctx.scoped(|| Stamps {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label,
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label,
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label,
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            period_ns: ctx.queue().get_timestamp_period() as f64,
        })?;
        Ok(Self {
            kind: TimerKind::GpuTimestamps,
            stamps: Some(stamps),
        })
    }

    /// The timer in use.
    pub fn kind(&self) -> TimerKind {
        self.kind
    }

    /// Runs `steps` steps (`record(encoder, i)` records step `i`), each in its own submission,
    /// waits once, and returns the batch time. The queue is drained before the clock starts.
    pub fn time_batch<F>(&self, ctx: &GpuContext, steps: u32, mut record: F) -> Result<BatchTime>
    where
        F: FnMut(&mut wgpu::CommandEncoder, u32) -> Result<()>,
    {
        if steps == 0 {
            return Err(Error::InvalidConfig(
                "a timed batch needs at least one step",
            ));
        }
        ctx.wait()?;
        let desc = wgpu::CommandEncoderDescriptor {
            label: Some("optbench step"),
        };
        let start = Instant::now();
        for i in 0..steps {
            let mut enc = ctx.device().create_command_encoder(&desc);
            if let (0, Some(s)) = (i, &self.stamps) {
                enc.write_timestamp(&s.query_set, 0);
            }
            record(&mut enc, i)?;
            if let (true, Some(s)) = (i + 1 == steps, &self.stamps) {
                enc.write_timestamp(&s.query_set, 1);
                enc.resolve_query_set(&s.query_set, 0..2, &s.resolve, 0);
                enc.copy_buffer_to_buffer(&s.resolve, 0, &s.readback, 0, 16);
            }
            ctx.queue().submit([enc.finish()]);
        }
        let Some(s) = &self.stamps else {
            ctx.wait()?;
            return Ok(BatchTime {
                steps,
                wall_s: start.elapsed().as_secs_f64(),
                gpu_s: None,
            });
        };
        let t = crate::readback::map_read::<u64>(ctx, &s.readback)?;
        let wall_s = start.elapsed().as_secs_f64();
        let ticks = t[1].wrapping_sub(t[0]);
        Ok(BatchTime {
            steps,
            wall_s,
            gpu_s: Some(ticks as f64 * s.period_ns * 1e-9),
        })
    }
}

/// Order statistics of a sample (seconds, GB/s, whatever was measured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Statistics of `samples` (linear interpolation between order statistics); `None` when
    /// empty or when a sample is NaN.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (s.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
        };
        Some(Self {
            n: s.len(),
            median: q(0.5),
            p10: q(0.1),
            p90: q(0.9),
            min: s[0],
            max: s[s.len() - 1],
        })
    }

    /// Every statistic multiplied by `k` (for unit changes).
    pub fn scaled(&self, k: f64) -> Self {
        Self {
            n: self.n,
            median: self.median * k,
            p10: self.p10 * k,
            p90: self.p90 * k,
            min: self.min * k,
            max: self.max * k,
        }
    }
}

/// Decimal gigabytes per second.
pub fn gb_per_s(bytes: f64, seconds: f64) -> f64 {
    bytes / seconds / 1e9
}

/// Host memcpy bandwidth: `threads` threads each copy their share of a `bytes`-byte buffer
/// into another, `reps` times after one untimed pass; read and write are both counted
/// (2 x `bytes` per copy). Returns the GB/s of each timed copy.
pub fn host_memcpy(bytes: usize, threads: usize, reps: usize) -> Vec<f64> {
    let n = (bytes / 4).max(1);
    let threads = threads.max(1);
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let per = n.div_ceil(threads);
    let once = |dst: &mut [f32]| {
        std::thread::scope(|s| {
            for (d, sr) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(sr));
            }
        });
    };
    once(&mut dst);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            once(&mut dst);
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(&dst);
            gb_per_s(2.0 * (n * 4) as f64, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (5, 3.0, 1.0, 5.0));
        assert!((s.p10 - 1.4).abs() < 1e-12);
        assert!((s.p90 - 4.6).abs() < 1e-12);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[2.0]).unwrap().p90, 2.0);
    }

    #[test]
    fn copy_config_fits_the_device_limits() {
        let with = |n: u32| wgpu::Limits {
            max_compute_invocations_per_workgroup: n,
            max_compute_workgroup_size_x: n,
            ..wgpu::Limits::default()
        };
        assert_eq!(CopyConfig::for_limits(&with(1024)), CopyConfig::default());
        let c = CopyConfig::for_limits(&with(256));
        assert_eq!((c.workgroup_size, c.vec4_per_invocation), (256, 4));
        let c = CopyConfig::for_limits(&with(100));
        assert_eq!((c.workgroup_size, c.vec4_per_invocation), (64, 16));
    }

    #[test]
    fn memcpy_reports_positive_bandwidth() {
        let r = host_memcpy(1 << 16, 2, 2);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|&x| x > 0.0));
    }
}

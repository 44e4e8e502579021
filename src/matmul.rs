//! [`BatchedMatmul`]: many independent f32 matrix multiplies over one flat buffer in one
//! dispatch (shaders/matmul.wgsl), and [`matmul_cpu`], its CPU twin with the kernel's summation
//! order.
//!
//! A *stage* is a list of [`MatmulProblem`]s, each `C = alpha·op(A)·op(B) [+ beta·D]` on
//! row-major matrices at element offsets of one buffer. The tile table (one row per 32×32
//! output tile of every problem) is built and uploaded once, at construction; recording the
//! stage afterwards is one dispatch and allocates nothing. This is what Muon's Newton–Schulz
//! iteration needs on every weight matrix of a model (`A = X·Xᵀ`, `B = c·A·A + b·A`,
//! `X' = B·X + a·X`): three stages per iteration, whatever the number of matrices.
//!
//! Numerics: each output element is one f32 accumulator summed over `l = 0..k` in order, then
//! scaled by `alpha` and, with D, increased by `beta·D`. [`matmul_cpu`] performs exactly these
//! operations, so on an adapter that does not contract `a*b + c` into a fused multiply-add
//! (lavapipe) the GPU and CPU agree bit for bit. An adapter that does fuse rounds each step once
//! instead of twice; both results are then within `k·2⁻²³·Σ_l |a_l·b_l|` (the classic bound
//! for recursive summation, `γ_k`, to first order) of the exact product, so of each other
//! within twice that, plus one rounding of the `alpha`/`beta` epilogue (see
//! [`matmul_error_bound`]).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{check_finite, Error, Result};
use crate::pipeline::Kernel;
use crate::shaders::MATMUL;

/// Output rows and columns per workgroup (WGSL `MM_TILE`).
pub const MM_TILE: u32 = 32;
/// K elements staged in workgroup memory at a time (WGSL `MM_BK`).
pub const MM_BK: u32 = 32;
/// WGSL `MM_TRANS_A`: A is stored k×m.
pub const MM_TRANS_A: u32 = 1;
/// WGSL `MM_TRANS_B`: B is stored n×k.
pub const MM_TRANS_B: u32 = 2;
/// WGSL `MM_HAS_D`: add `beta·D`.
pub const MM_HAS_D: u32 = 4;

/// One multiply of a stage: `C = alpha·op(A)·op(B)`, plus `beta·D` when `d_offset` is set.
/// `op(A)` is m×k (stored row-major as m×k, or as k×m with `transpose_a`), `op(B)` is k×n
/// (stored k×n, or n×k with `transpose_b`), C and D are m×n row-major. Offsets count f32
/// elements from the start of the stage's buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulProblem {
    /// Rows of C.
    pub m: u32,
    /// Columns of C.
    pub n: u32,
    /// The inner dimension.
    pub k: u32,
    /// First element of A.
    pub a_offset: u32,
    /// First element of B.
    pub b_offset: u32,
    /// First element of C (written).
    pub c_offset: u32,
    /// First element of D, or `None` for no D term. D may be C itself (same offset).
    pub d_offset: Option<u32>,
    /// A is stored k×m (op(A) = Aᵀ).
    pub transpose_a: bool,
    /// B is stored n×k (op(B) = Bᵀ).
    pub transpose_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of D (ignored without D).
    pub beta: f32,
}

impl MatmulProblem {
    /// `C = A·B` with A m×k at `a`, B k×n at `b`, C m×n at `c`.
    pub fn new(m: u32, n: u32, k: u32, a: u32, b: u32, c: u32) -> Self {
        Self {
            m,
            n,
            k,
            a_offset: a,
            b_offset: b,
            c_offset: c,
            d_offset: None,
            transpose_a: false,
            transpose_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// A is stored transposed (k×m).
    pub fn transpose_a(mut self) -> Self {
        self.transpose_a = true;
        self
    }

    /// B is stored transposed (n×k).
    pub fn transpose_b(mut self) -> Self {
        self.transpose_b = true;
        self
    }

    /// Scales the product by `alpha`.
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// Adds `beta·D`, D m×n at `d` (may be C's own offset).
    pub fn plus(mut self, beta: f32, d: u32) -> Self {
        self.beta = beta;
        self.d_offset = Some(d);
        self
    }

    /// Multiply-adds of the product (`m·n·k`); FLOPs are twice this.
    pub fn macs(&self) -> u64 {
        self.m as u64 * self.n as u64 * self.k as u64
    }

    fn flags(&self) -> u32 {
        (if self.transpose_a { MM_TRANS_A } else { 0 })
            | (if self.transpose_b { MM_TRANS_B } else { 0 })
            | (if self.d_offset.is_some() { MM_HAS_D } else { 0 })
    }

    fn tiles(&self) -> u64 {
        (self.m as u64).div_ceil(MM_TILE as u64) * (self.n as u64).div_ceil(MM_TILE as u64)
    }

    /// `(start, end)` element ranges: reads (A, B, D) and the write (C); empty ones dropped.
    fn regions(&self) -> ([Option<Span>; 3], Option<Span>) {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        let span = |off: u32, len: u64| (len > 0).then_some((off as u64, off as u64 + len));
        (
            [
                span(self.a_offset, m * k),
                span(self.b_offset, k * n),
                self.d_offset.and_then(|d| span(d, m * n)),
            ],
            span(self.c_offset, m * n),
        )
    }
}

/// A `(start, end)` range of elements.
type Span = (u64, u64);

/// The kernel's per-problem row (WGSL `MatmulProblem`, 48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct GpuProblem {
    /// Rows of C.
    pub m: u32,
    /// Columns of C.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// `MM_TRANS_A | MM_TRANS_B | MM_HAS_D`.
    pub flags: u32,
    /// Offset of A.
    pub a_off: u32,
    /// Offset of B.
    pub b_off: u32,
    /// Offset of C.
    pub c_off: u32,
    /// Offset of D (0 without D).
    pub d_off: u32,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of D.
    pub beta: f32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
}

/// Checks a stage against a buffer of `data_len` f32s: every region inside it, alpha and beta
/// finite, and no problem writing where any problem of the stage reads or writes (D may be C
/// exactly). Returns the number of elements the stage touches (the end of its last region).
pub fn validate(problems: &[MatmulProblem], data_len: u64) -> Result<u64> {
    if data_len > u32::MAX as u64 + 1 {
        return Err(Error::LimitExceeded {
            what: "matmul data buffer elements".into(),
            value: data_len,
            limit: u32::MAX as u64 + 1,
            why: "the kernel indexes the buffer with u32",
        });
    }
    let bad = |problem: usize, reason: String| Error::InvalidMatmul { problem, reason };
    let mut extent = 0u64;
    let mut writes: Vec<(u64, u64, usize)> = Vec::new();
    let mut reads: Vec<(u64, u64, usize, bool)> = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        check_finite("alpha", p.alpha as f64)?;
        check_finite("beta", p.beta as f64)?;
        let (rs, w) = p.regions();
        for (name, r) in ["A", "B", "D"].iter().zip(rs).chain([(&"C", w)]) {
            if let Some((s, e)) = r {
                if e > data_len {
                    return Err(bad(
                        i,
                        format!("{name} spans elements {s}..{e}, past the data's {data_len}"),
                    ));
                }
                extent = extent.max(e);
            }
        }
        if let Some((s, e)) = w {
            writes.push((s, e, i));
        }
        for (j, r) in rs.into_iter().enumerate() {
            if let Some((s, e)) = r {
                // D at C's own offset is an in-place epilogue: each element is read once by
                // the invocation that writes it.
                let d_is_c = j == 2 && w == Some((s, e));
                reads.push((s, e, i, d_is_c));
            }
        }
    }
    writes.sort_unstable();
    for pair in writes.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(bad(
                pair[1].2,
                format!("its C overlaps the C of problem {}", pair[0].2),
            ));
        }
    }
    for &(s, e, i, d_is_c) in &reads {
        // The last write starting before this read's end is the only one that can overlap it
        // (writes are disjoint and sorted).
        let idx = writes.partition_point(|w| w.0 < e);
        if idx > 0 {
            let (ws, we, wi) = writes[idx - 1];
            if we > s && !(d_is_c && wi == i && ws == s && we == e) {
                return Err(bad(
                    i,
                    format!(
                        "it reads elements {s}..{e}, which overlap the C of problem {wi} \
                         ({ws}..{we}); a stage's problems must be independent"
                    ),
                ));
            }
        }
    }
    Ok(extent)
}

/// The CPU twin of one stage: the same operations in the same order as the kernel
/// (see the module docs). Validates first; on error `data` is unchanged.
pub fn matmul_cpu(problems: &[MatmulProblem], data: &mut [f32]) -> Result<()> {
    validate(problems, data.len() as u64)?;
    for p in problems {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let (ao, bo, co) = (
            p.a_offset as usize,
            p.b_offset as usize,
            p.c_offset as usize,
        );
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for l in 0..k {
                    let a = if p.transpose_a {
                        data[ao + l * m + i]
                    } else {
                        data[ao + i * k + l]
                    };
                    let b = if p.transpose_b {
                        data[bo + j * k + l]
                    } else {
                        data[bo + l * n + j]
                    };
                    acc += a * b;
                }
                let mut out = p.alpha * acc;
                if let Some(d) = p.d_offset {
                    out += p.beta * data[d as usize + i * n + j];
                }
                data[co + i * n + j] = out;
            }
        }
    }
    Ok(())
}

/// Per element of C, how far the kernel may be from [`matmul_cpu`] on an adapter that fuses
/// `a*b + c` (0 difference where it does not, e.g. lavapipe): twice the recursive-summation
/// bound `1.01·k·u·Σ|a_l·b_l|·|alpha|`, plus one unit roundoff of the epilogue's terms
/// (`u = 2⁻²⁴`). `data` is the stage's input.
pub fn matmul_error_bound(p: &MatmulProblem, data: &[f32]) -> Vec<f32> {
    let u = f32::EPSILON as f64 / 2.0;
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut abs = 0f64;
            let mut sum = 0f64;
            for l in 0..k {
                let a = if p.transpose_a {
                    data[p.a_offset as usize + l * m + i]
                } else {
                    data[p.a_offset as usize + i * k + l]
                } as f64;
                let b = if p.transpose_b {
                    data[p.b_offset as usize + j * k + l]
                } else {
                    data[p.b_offset as usize + l * n + j]
                } as f64;
                abs += (a * b).abs();
                sum += a * b;
            }
            let prod = (p.alpha as f64).abs() * abs;
            let mut tail = (p.alpha as f64 * sum).abs();
            if let Some(d) = p.d_offset {
                tail += (p.beta as f64 * data[d as usize + i * n + j] as f64).abs();
            }
            out[i * n + j] = (2.0 * 1.01 * k as f64 * u * prod + 4.0 * u * tail) as f32;
        }
    }
    out
}

/// One stage of independent multiplies on one GPU buffer, in one dispatch. Built once (tile
/// table, problem table, bind group); [`BatchedMatmul::record`] / [`BatchedMatmul::encode`]
/// then allocate nothing.
#[derive(Debug)]
pub struct BatchedMatmul {
    ctx: GpuContext,
    kernel: Arc<Kernel>,
    problems: Vec<MatmulProblem>,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    tiles: u64,
    _problem_buf: wgpu::Buffer,
    _tile_buf: wgpu::Buffer,
}

impl BatchedMatmul {
    /// Builds the stage over `data` (a STORAGE buffer of `ctx`'s device). Checks every problem
    /// ([`validate`]), the bytes the stage binds against the device's storage-binding limit,
    /// and the tile count against the 2-D grid limit, before creating anything.
    pub fn new(ctx: &GpuContext, problems: &[MatmulProblem], data: &wgpu::Buffer) -> Result<Self> {
        ctx.check_alive()?;
        if !data.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Unsupported(
                "the matmul data buffer needs STORAGE usage",
            ));
        }
        let extent = validate(problems, data.size() / 4)?;
        let bytes = (extent * 4).max(16).min(data.size() & !3);
        if extent * 4 > ctx.max_binding_bytes() {
            return Err(Error::BufferTooLarge {
                what: "matmul data binding".into(),
                bytes: extent * 4,
                limit: ctx.max_binding_bytes(),
            });
        }
        let tiles: u64 = problems.iter().map(|p| p.tiles()).sum();
        // x may be capped below the device (ContextOptions); y keeps the device's limit.
        let max_dim = ctx.max_workgroups_per_dim().max(1) as u64;
        let max_y = ctx.limits().max_compute_workgroups_per_dimension.max(1) as u64;
        let limit = (max_dim * max_y).min(u32::MAX as u64);
        if tiles > limit {
            return Err(Error::LimitExceeded {
                what: "matmul output tiles in one stage".into(),
                value: tiles,
                limit,
                why:
                    "one workgroup per tile, in a 2-D grid of the device's workgroups per dimension",
            });
        }
        let tile_bytes = tiles * 16;
        let problem_bytes = problems.len() as u64 * std::mem::size_of::<GpuProblem>() as u64;
        let storage_limit = ctx.max_binding_bytes();
        for (what, bytes) in [
            ("matmul tile table", tile_bytes),
            ("matmul problem table", problem_bytes),
        ] {
            if bytes > storage_limit {
                return Err(Error::BufferTooLarge {
                    what: what.into(),
                    bytes,
                    limit: storage_limit,
                });
            }
        }
        let gpu: Vec<GpuProblem> = problems
            .iter()
            .map(|p| GpuProblem {
                m: p.m,
                n: p.n,
                k: p.k,
                flags: p.flags(),
                a_off: p.a_offset,
                b_off: p.b_offset,
                c_off: p.c_offset,
                d_off: p.d_offset.unwrap_or(0),
                alpha: p.alpha,
                beta: if p.d_offset.is_some() { p.beta } else { 0.0 },
                pad0: 0,
                pad1: 0,
            })
            .collect();
        let mut table: Vec<[u32; 4]> = Vec::with_capacity(tiles as usize);
        for (i, p) in problems.iter().enumerate() {
            for r in 0..p.m.div_ceil(MM_TILE) {
                for c in 0..p.n.div_ceil(MM_TILE) {
                    table.push([i as u32, r * MM_TILE, c * MM_TILE, 0]);
                }
            }
        }
        let kernel = ctx.kernel(MATMUL)?;
        let label = MATMUL.entry_point();
        let (problem_buf, tile_buf, bind_group) = ctx.scoped(|| {
            let dev = ctx.device();
            let make = |name: &str, contents: &[u8]| {
                let buf = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} {name}")),
                    // wgpu rejects empty bindings, and a runtime array binds at least one
                    // element: an empty stage binds one zero problem row (48 bytes).
                    size: (contents.len() as u64).max(48),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                ctx.queue().write_buffer(&buf, 0, contents);
                buf
            };
            let problem_buf = make("problems", bytemuck::cast_slice(&gpu));
            let tile_buf = make("tiles", bytemuck::cast_slice(&table));
            let bind_group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &kernel.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: problem_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        // Exactly the tiles: the kernel bounds its grid with arrayLength.
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &tile_buf,
                            offset: 0,
                            size: std::num::NonZeroU64::new(tile_bytes.max(16)),
                        }),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: data,
                            offset: 0,
                            size: std::num::NonZeroU64::new(bytes),
                        }),
                    },
                ],
            });
            (problem_buf, tile_buf, bind_group)
        })?;
        Ok(Self {
            ctx: ctx.clone(),
            kernel,
            problems: problems.to_vec(),
            bind_group,
            grid: dispatch::grid(tiles as u32, max_dim as u32),
            tiles,
            _problem_buf: problem_buf,
            _tile_buf: tile_buf,
        })
    }

    /// The problems of the stage.
    pub fn problems(&self) -> &[MatmulProblem] {
        &self.problems
    }

    /// Output tiles (workgroups) of the dispatch.
    pub fn tiles(&self) -> u64 {
        self.tiles
    }

    /// Floating-point operations of the stage (`2·m·n·k` per problem, epilogue not counted).
    pub fn flops(&self) -> u64 {
        self.problems.iter().map(|p| 2 * p.macs()).sum()
    }

    /// Records the stage's one dispatch into an open compute pass (nothing for an empty stage).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.tiles == 0 {
            return;
        }
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }

    /// Records the stage in a compute pass of its own.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(MATMUL.entry_point()),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }

    /// Encodes and submits the stage (does not wait).
    pub fn run(&self) -> Result<()> {
        self.ctx.check_alive()?;
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(MATMUL.entry_point()),
            });
        self.encode(&mut enc);
        self.ctx.queue().submit([enc.finish()]);
        Ok(())
    }
}

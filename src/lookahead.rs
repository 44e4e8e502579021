//! Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back") around
//! any optimizer of the library: [`Lookahead`] on the GPU around an [`Optimizer`], and its CPU
//! twin [`CpuLookahead`] around a [`CpuOptimizer`].
//!
//! The inner optimizer moves the *fast* weights (the arena's params) as usual; every `k` steps
//! the wrapped tensors' *slow* weights φ and the fast weights θ are synced, per element:
//! ```text
//! φ = φ + α (θ − φ);  θ = φ
//! ```
//! Two variants ([`LookaheadVariant`]):
//! * **Paper** (the default; the paper, optax's `lookahead` and SPEC §2.8): φ₀ = θ₀, a copy of
//!   the params when the Lookahead is built; `k = 5`, `α = 0.5`; optionally the inner
//!   optimizer's state of the wrapped tensors is reset at every sync (optax `reset_state`;
//!   what reset means: [`Optimizer::reset_state`]). Every wrapped tensor is synced, frozen
//!   ones included: the sync is a function of the weights alone, as in optax, where there is
//!   no "no gradient".
//! * **Timm** (`timm.optim.Lookahead`, SPEC-2 §2.12): `k = 6`; a tensor's slow weights are
//!   created at its first sync *with a gradient*, as a copy of the fast weights, so that sync
//!   leaves the params as they are (slow weights effectively start at θ_k); a tensor frozen
//!   ([`Optimizer::set_frozen`], PyTorch's `grad is None`) at a sync skips it, its slow weights
//!   staying as they were (or absent). timm has no state reset, so `reset_state` is refused.
//!
//! Both count Lookahead steps (calls of `step`, frozen tensors or not, as timm's per-group
//! `lookahead_step`): a sync follows the inner step of every step whose count is a multiple of
//! `k`, in the same submission. Only the wrapped tensors have slow weights, laid out as a
//! segment of the arena (each on a vec4 boundary, [`SegmentLayout`]), so wrapping a few tensors
//! costs memory for those alone; one dispatch (per binding window: one unless the wrapped
//! tensors span more than a storage binding) syncs all of them over their chunk table, and
//! everything a sync records (its tables, bind groups, the state reset's commands) is built with
//! the Lookahead, so a step allocates nothing.

use crate::optim::face::Engine;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::arena::window_binding;
use crate::arena::{ArenaTables, ParamArena, ParamLayout, SegmentLayout};
use crate::context::GpuContext;
use crate::cpu::CpuOptimizer;
use crate::error::{Error, Result};
use crate::gpu_buffers::{storage_buffer, table_bytes};
use crate::optim::book::Select;
use crate::optim::book::{select_tensors, Book};
use crate::optim::gpu::{Optimizer, StateReset};
use crate::pipeline::{Kernel, PipelineKey};
use crate::readback;

/// `lookahead_sync` in lookahead.wgsl (defined with the other kernel sources).
pub use crate::shaders::LOOKAHEAD_SYNC as LOOKAHEAD_SYNC_KERNEL;

/// WGSL `LOOKAHEAD_SKIP`: the tensor is left alone at this sync.
pub const LOOKAHEAD_SKIP: u32 = 0;
/// WGSL `LOOKAHEAD_SYNC`: `slow += alpha * (p - slow); p = slow`.
pub const LOOKAHEAD_SYNC: u32 = 1;
/// WGSL `LOOKAHEAD_INIT`: `slow = p` (timm's first sync of a tensor).
pub const LOOKAHEAD_INIT: u32 = 2;

/// timm's state key for the slow weights (what [`Lookahead::read_slow`] reports as missing
/// before a tensor's first sync in the timm variant).
pub const SLOW_STATE: &str = "lookahead_slow_buff";

/// Which Lookahead to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LookaheadVariant {
    /// The paper and optax: slow weights copied from the params at wrap time, every wrapped
    /// tensor synced, optional inner-state reset at each sync.
    #[default]
    Paper,
    /// timm: slow weights created at a tensor's first sync (a no-op sync), tensors frozen at a
    /// sync skip it, no state reset.
    Timm,
}

/// Lookahead's settings. `Default` is the paper's (SPEC §2.8): `k = 5`, `alpha = 0.5`, no state
/// reset, [`LookaheadVariant::Paper`]; [`LookaheadConfig::timm`] is timm's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookaheadConfig {
    /// Sync every `k` steps (>= 1; paper 5, timm 6).
    pub k: u64,
    /// Slow step size α, in `[0, 1]` (default 0.5). α = 1 makes the sync a no-op on the params;
    /// α = 0 sends them back to the slow weights.
    pub alpha: f64,
    /// Re-initialize the inner optimizer's state of the wrapped tensors after each sync (optax
    /// `reset_state`; paper variant only): every wrapped tensor, frozen ones included (each is
    /// synced); tensors not wrapped keep theirs. See [`Optimizer::reset_state`] for what is
    /// reset. Zero-initialized state is cleared in place; a state with a non-zero initial
    /// value (Adagrad's `initial_accumulator_value`, Rprop's `step_size`) is copied back from
    /// an image of its initial values kept on the GPU (one more buffer of that state's size).
    pub reset_state: bool,
    /// Paper or timm semantics.
    pub variant: LookaheadVariant,
}

impl Default for LookaheadConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl LookaheadConfig {
    /// The paper's and optax's settings: `k = 5`, `alpha = 0.5`, no reset.
    pub fn paper() -> Self {
        Self {
            k: 5,
            alpha: 0.5,
            reset_state: false,
            variant: LookaheadVariant::Paper,
        }
    }

    /// timm's `Lookahead(base_optimizer, alpha=0.5, k=6)`.
    pub fn timm() -> Self {
        Self {
            k: 6,
            alpha: 0.5,
            reset_state: false,
            variant: LookaheadVariant::Timm,
        }
    }

    /// The same settings with another `k`.
    pub fn with_k(mut self, k: u64) -> Self {
        self.k = k;
        self
    }

    /// The same settings with another `alpha`.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The same settings with the inner-state reset on or off.
    pub fn with_reset_state(mut self, reset_state: bool) -> Self {
        self.reset_state = reset_state;
        self
    }

    /// Checks the settings as timm's constructor does (`0 <= alpha <= 1`, `k >= 1`:
    /// [`Error::InvalidHyperparameter`]); a state reset with the timm variant, which has none,
    /// is [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(Error::hyper("alpha", self.alpha, "must be in [0, 1]"));
        }
        if self.k == 0 {
            return Err(Error::hyper("k", 0.0, "must be >= 1"));
        }
        if self.reset_state && self.variant == LookaheadVariant::Timm {
            return Err(Error::InvalidConfig(
                "timm's Lookahead has no inner-state reset; use LookaheadVariant::Paper",
            ));
        }
        Ok(())
    }
}

/// Mirrors `LookaheadHyper` in lookahead.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LookaheadHyper {
    /// alpha as f32.
    pub alpha: f32,
    /// Padding to 16 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `LookaheadTensor` in lookahead.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LookaheadTensor {
    /// [`LOOKAHEAD_SKIP`], [`LOOKAHEAD_SYNC`] or [`LOOKAHEAD_INIT`].
    pub mode: u32,
    /// Padding to 16 bytes.
    pub pad: [u32; 3],
}

/// The sync of one tensor on host slices, in the kernel's operation order (the definition
/// lookahead.wgsl is checked against).
pub fn sync_tensor(alpha: f32, mode: u32, p: &mut [f32], slow: &mut [f32]) {
    match mode {
        LOOKAHEAD_SYNC => {
            for (p, s) in p.iter_mut().zip(slow.iter_mut()) {
                *s += alpha * (*p - *s);
                *p = *s;
            }
        }
        LOOKAHEAD_INIT => slow.copy_from_slice(p),
        _ => {}
    }
}

/// A wrapped tensor's mode at a sync: the paper syncs every tensor; timm skips frozen ones
/// and creates the slow weights at a tensor's first sync.
fn sync_mode(variant: LookaheadVariant, frozen: bool, ready: bool) -> u32 {
    match variant {
        LookaheadVariant::Paper => LOOKAHEAD_SYNC,
        LookaheadVariant::Timm if frozen => LOOKAHEAD_SKIP,
        LookaheadVariant::Timm if ready => LOOKAHEAD_SYNC,
        LookaheadVariant::Timm => LOOKAHEAD_INIT,
    }
}

/// The wrapped tensors: `select`'s, less those no parameter group of the inner optimizer
/// takes (never updated, their sync would be a no-op). None left is an error.
fn wrapped(layout: &ParamLayout, book: &Book, select: &Select) -> Result<Vec<usize>> {
    let out: Vec<usize> = select_tensors(layout, select)?
        .into_iter()
        .filter(|&i| book.loc[i].is_some())
        .collect();
    if out.is_empty() {
        return Err(Error::InvalidConfig(
            "the Lookahead selects no tensor its optimizer updates",
        ));
    }
    Ok(out)
}

fn local_index(n: usize, members: &[usize]) -> Vec<Option<usize>> {
    let mut out = vec![None; n];
    for (k, &i) in members.iter().enumerate() {
        out[i] = Some(k);
    }
    out
}

/// Arena index and wrapped index of `tensor` ([`Error::NotWrapped`] when not wrapped), for
/// both engines' per-tensor slow-weight accessors.
fn wrapped_index(
    layout: &ParamLayout,
    local_of: &[Option<usize>],
    tensor: &str,
) -> Result<(usize, usize)> {
    let i = layout.index_of(tensor)?;
    let k = local_of[i].ok_or_else(|| Error::NotWrapped(tensor.to_string()))?;
    Ok((i, k))
}

/// `read_slow`'s refusal while a tensor has no slow weights yet (timm, before its first
/// sync: timm has no `lookahead_slow_buff` for it).
fn check_slow_ready(ready: bool) -> Result<()> {
    if !ready {
        return Err(Error::UnknownState {
            name: SLOW_STATE.to_string(),
            available: Vec::new(),
        });
    }
    Ok(())
}

/// Both engines' `set_slow_ready`: the length checked first, nothing changed on error.
fn restore_ready(ready: &mut [bool], from: &[bool]) -> Result<()> {
    if from.len() != ready.len() {
        return Err(Error::LengthMismatch {
            what: "lookahead slow_ready".into(),
            expected: ready.len(),
            got: from.len(),
        });
    }
    ready.copy_from_slice(from);
    Ok(())
}

/// The GPU half of a sync, built once: the wrapped tensors' layout, slow-weights buffer,
/// tables, pipelines and bind groups, and the inner optimizer's prepared state reset.
#[derive(Debug)]
struct SyncPass {
    layout: SegmentLayout,
    kernel: Arc<Kernel>,
    slow: wgpu::Buffer,
    tensors: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    /// Params-to-slow copies `(arena byte offset, slow byte offset, bytes)`: the paper's
    /// φ₀ = θ₀.
    copies: Vec<(u64, u64, u64)>,
    params: wgpu::Buffer,
    reset: Option<StateReset>,
    /// Kept alive for the bind groups.
    _keep: (wgpu::Buffer, ArenaTables, wgpu::Buffer),
}

impl SyncPass {
    /// Records the sync dispatches (one per binding window with work), then the state reset.
    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("lookahead_sync"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            for (bg, &(x, y)) in self.bind_groups.iter().zip(&self.grids) {
                if x > 0 {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        if let Some(r) = &self.reset {
            r.record(encoder);
        }
    }

    fn record_copies(&self, encoder: &mut wgpu::CommandEncoder) {
        for &(src, dst, size) in &self.copies {
            encoder.copy_buffer_to_buffer(&self.params, src, &self.slow, dst, size);
        }
    }

    fn dispatches(&self) -> usize {
        self.grids.iter().filter(|g| g.0 > 0).count()
    }
}

/// Lookahead on the GPU around an [`Optimizer`] (see the module docs for the semantics of its
/// two variants). It owns the inner optimizer ([`Lookahead::inner`], [`Lookahead::inner_mut`]
/// for its lr, groups, frozen flags and state) and the slow weights of the wrapped tensors.
///
/// ```no_run
/// # fn main() -> wgpu_optim::Result<()> {
/// use wgpu_optim::{AdamConfig, GpuContext, Lookahead, LookaheadConfig, Optimizer};
/// use wgpu_optim::{ParamArena, TensorSpec};
/// let ctx = GpuContext::new()?;
/// let arena = ParamArena::new(&ctx, &[TensorSpec::new("w", 1024), TensorSpec::new("b", 16)])?;
/// arena.write_params("w", &vec![0.1; 1024])?; // before wrapping: the slow weights copy these
/// let adam = Optimizer::new(&ctx, &arena, AdamConfig::adamw())?;
/// let mut opt = Lookahead::new(&ctx, &arena, adam, LookaheadConfig::default())?;
/// for _ in 0..10 {
///     // ... write gradients into the arena ...
///     opt.step(&arena)?; // steps 5 and 10 also sync, in the same submission
/// }
/// let slow_w = opt.read_slow("w")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lookahead {
    inner: Optimizer,
    config: LookaheadConfig,
    ctx: GpuContext,
    arena_id: u64,
    arena_layout: Arc<ParamLayout>,
    sync: SyncPass,
    local_of: Vec<Option<usize>>,
    /// Per wrapped tensor: whether its slow weights exist (always, for the paper variant).
    ready: Vec<bool>,
    /// Reused at every sync: the timm table and the readiness it leads to.
    table: Vec<LookaheadTensor>,
    next_ready: Vec<bool>,
    steps: u64,
    /// The last step was counted before its AMP check was read (see `settle_amp`).
    amp_pending: bool,
}

impl Lookahead {
    /// Wraps every tensor `optimizer` updates (every tensor in one of its groups).
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        optimizer: Optimizer,
        config: LookaheadConfig,
    ) -> Result<Self> {
        Self::with_selection(ctx, arena, optimizer, config, Select::All)
    }

    /// Wraps the tensors `select` picks ([`Select::Rest`] is refused) among those `optimizer`
    /// updates; the others step with the inner optimizer alone and have no slow weights. The
    /// paper variant copies the wrapped tensors' current params as the slow weights, so write
    /// the initial params first. On error nothing is built and `optimizer` is dropped (check
    /// the settings first with [`LookaheadConfig::validate`] to keep it).
    pub fn with_selection(
        ctx: &GpuContext,
        arena: &ParamArena,
        optimizer: Optimizer,
        config: LookaheadConfig,
        select: Select,
    ) -> Result<Self> {
        config.validate()?;
        ctx.check_alive()?;
        if ctx.id() != arena.context().id() || optimizer.context().id() != ctx.id() {
            return Err(Error::Unsupported(
                "the arena, the optimizer and the Lookahead must share one GpuContext",
            ));
        }
        // The optimizer checks its arena at every step; checked here too, so a Lookahead never
        // binds another arena's buffers.
        optimizer.check_arena(arena)?;
        if arena.precision().is_mixed() {
            return Err(Error::Unsupported(
                "Lookahead does not run on a mixed-precision arena (its sync pass writes only \
                 the f32 master weights, not the 16-bit model copy)",
            ));
        }
        let members = wrapped(arena.layout(), optimizer.book(), &select)?;
        let layout = SegmentLayout::new(
            arena.layout(),
            members.clone(),
            &[],
            ctx.max_binding_bytes(),
            ctx.limits().min_storage_buffer_offset_alignment as u64,
            // No packed chunks: they would sit in windows of their own, run by another pipeline,
            // and make the sync two dispatches. A sync runs once per k steps, so the lanes a
            // small tensor leaves idle in its chunk cost little.
            0,
        )?;
        let bytes = layout.state_bytes().max(16);
        if bytes > ctx.limits().max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "lookahead slow weights".into(),
                bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        let label = LOOKAHEAD_SYNC_KERNEL.entry_point();
        let same = if layout.state_at_params(arena.layout()) {
            1.0
        } else {
            0.0
        };
        let kernel = ctx.kernel_keyed(PipelineKey::with_constants(
            LOOKAHEAD_SYNC_KERNEL,
            &[("STATE_AT_PARAMS", same)],
        ))?;
        let reset = match config.reset_state {
            true => Some(optimizer.prepare_reset(&members)?),
            false => None,
        };
        let n = members.len();
        let modes = match config.variant {
            // The paper's table never changes: written once, here.
            LookaheadVariant::Paper => LOOKAHEAD_SYNC,
            LookaheadVariant::Timm => LOOKAHEAD_SKIP,
        };
        let table = vec![
            LookaheadTensor {
                mode: modes,
                pad: [0; 3],
            };
            n
        ];
        let tensors_layout = arena.layout().tensors();
        // φ₀ = θ₀ copies, merged where neighbours are contiguous in both buffers.
        let mut copies: Vec<(u64, u64, u64)> = Vec::new();
        for (&i, &off) in members.iter().zip(layout.state_offsets()) {
            let t = &tensors_layout[i];
            if t.len == 0 {
                continue;
            }
            let (src, dst, size) = (
                t.offset as u64 * 4,
                off as u64 * 4,
                t.len.next_multiple_of(4) as u64 * 4,
            );
            match copies.last_mut() {
                Some(c) if c.0 + c.2 == src && c.1 + c.2 == dst => c.2 += size,
                _ => copies.push((src, dst, size)),
            }
        }
        let sync = ctx.scoped(|| {
            let hyper = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{label} hyper")),
                size: std::mem::size_of::<LookaheadHyper>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue().write_buffer(
                &hyper,
                0,
                bytemuck::bytes_of(&LookaheadHyper {
                    alpha: config.alpha as f32,
                    pad: [0; 3],
                }),
            );
            let tables = ArenaTables::new(ctx, &layout, label);
            let tensors = storage_buffer(
                ctx,
                &format!("{label} tensors"),
                table_bytes::<LookaheadTensor>(n),
            );
            ctx.queue()
                .write_buffer(&tensors, 0, bytemuck::cast_slice(&table));
            let slow = storage_buffer(ctx, &format!("{label} slow"), bytes);
            // Binding 4 (aux) is part of the convention but unread.
            let aux = storage_buffer(ctx, &format!("{label} unused aux"), 16);
            let bind_groups = layout
                .windows()
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                    let entries = [
                        entry(0, hyper.as_entire_binding()),
                        entry(1, tables.window(i)),
                        entry(2, tables.chunks.as_entire_binding()),
                        entry(3, tensors.as_entire_binding()),
                        entry(4, aux.as_entire_binding()),
                        entry(5, window_binding(arena.params_buffer(), w)),
                        entry(6, window_binding(arena.grads_buffer(), w)),
                        entry(
                            7,
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &slow,
                                offset: w.state_byte_offset(),
                                size: std::num::NonZeroU64::new(w.state_byte_size()),
                            }),
                        ),
                    ];
                    ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(label),
                        layout: &kernel.layout,
                        entries: &entries,
                    })
                })
                .collect();
            let grids = layout
                .windows()
                .iter()
                .map(|w| crate::dispatch::grid(w.chunk_count, ctx.max_workgroups_per_dim()))
                .collect();
            SyncPass {
                kernel: kernel.clone(),
                slow,
                tensors,
                bind_groups,
                grids,
                copies,
                params: arena.params_buffer().clone(),
                reset,
                _keep: (hyper, tables, aux),
                layout,
            }
        })?;
        let la = Self {
            inner: optimizer,
            config,
            ctx: ctx.clone(),
            arena_id: arena.id(),
            arena_layout: arena.layout_arc(),
            local_of: local_index(tensors_layout.len(), &members),
            ready: vec![config.variant == LookaheadVariant::Paper; n],
            table,
            next_ready: vec![false; n],
            sync,
            steps: 0,
            amp_pending: false,
        };
        if config.variant == LookaheadVariant::Paper {
            la.submit(|s, enc| s.record_copies(enc));
        }
        Ok(la)
    }

    fn submit(&self, f: impl FnOnce(&SyncPass, &mut wgpu::CommandEncoder)) {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("lookahead_sync"),
                });
        f(&self.sync, &mut encoder);
        self.ctx.queue().submit([encoder.finish()]);
    }

    fn check_arena(&self, arena: &ParamArena) -> Result<()> {
        self.ctx.check_alive()?;
        if arena.id() != self.arena_id {
            return Err(Error::ArenaMismatch {
                expected: self.arena_id,
                got: arena.id(),
            });
        }
        Ok(())
    }

    /// Whether the next step syncs.
    pub fn next_step_syncs(&self) -> bool {
        self.steps.wrapping_add(1) % self.config.k == 0
    }

    /// Fills this sync's table and the readiness it leads to; writes the timm table (the
    /// paper's never changes). Takes effect with the next submission.
    fn prepare_sync(&mut self) {
        let book = self.inner.book();
        self.next_ready.copy_from_slice(&self.ready);
        if self.config.variant == LookaheadVariant::Paper {
            return;
        }
        for (k, &i) in self.sync.layout.members().iter().enumerate() {
            let mode = sync_mode(self.config.variant, book.frozen[i], self.ready[k]);
            self.next_ready[k] |= mode == LOOKAHEAD_INIT;
            self.table[k].mode = mode;
        }
        self.ctx
            .queue()
            .write_buffer(&self.sync.tensors, 0, bytemuck::cast_slice(&self.table));
    }

    /// The host half of a sync, once its commands are recorded (and will be submitted).
    fn finish_sync(&mut self) {
        std::mem::swap(&mut self.ready, &mut self.next_ready);
        if self.sync.reset.is_some() {
            let members = self.sync.layout.members();
            self.inner.forget_steps(members);
        }
    }

    /// One step: the inner optimizer's, then on every `k`-th step the sync (and the inner
    /// state reset when configured) in the same submission. On error (the inner step's,
    /// e.g. [`Error::NonFiniteNorm`]) nothing changes and the step is not counted.
    ///
    /// With the inner optimizer's AMP skip on ([`Optimizer::set_amp`]), a step the guard
    /// skipped is not counted and does not sync, as PyTorch's GradScaler never calls the
    /// wrapped `step()`: an ordinary step is counted at once and taken back when its check is
    /// read (at the next step), and a sync step waits for its check before the sync (one host
    /// wait every `k` steps).
    pub fn step(&mut self, arena: &ParamArena) -> Result<()> {
        self.settle_amp()?;
        let amp_skip = self.amp_skip();
        if !self.next_step_syncs() {
            self.inner.step(arena)?;
            self.steps = self.steps.wrapping_add(1);
            self.amp_pending = amp_skip;
            return Ok(());
        }
        self.check_arena(arena)?;
        if amp_skip {
            self.inner.step(arena)?;
            if self.inner.found_inf()? == Some(true) {
                return Ok(());
            }
            self.prepare_sync();
            self.submit(|s, enc| s.record(enc));
            self.finish_sync();
            self.steps = self.steps.wrapping_add(1);
            return Ok(());
        }
        self.prepare_sync();
        let sync = &self.sync;
        self.inner.step_then(arena, |enc| sync.record(enc))?;
        self.finish_sync();
        self.steps = self.steps.wrapping_add(1);
        Ok(())
    }

    /// Records one step into `encoder`, as [`Optimizer::encode_step`] (same rules: at most one
    /// step per submission, counts advance here), with the sync behind the inner step on sync
    /// steps.
    pub fn encode_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        arena: &ParamArena,
    ) -> Result<()> {
        self.settle_amp()?;
        let syncs = self.next_step_syncs();
        self.check_arena(arena)?;
        if syncs && self.amp_skip() {
            return Err(Error::Unsupported(
                "with the AMP skip, a Lookahead sync step waits for the non-finite check; use \
                 step(), not encode_step()",
            ));
        }
        if !syncs {
            self.inner.encode_step(encoder, arena)?;
            self.amp_pending = self.amp_skip();
        } else {
            self.prepare_sync();
            self.inner.encode_step(encoder, arena)?;
            self.sync.record(encoder);
            self.finish_sync();
        }
        self.steps = self.steps.wrapping_add(1);
        Ok(())
    }

    /// Whether the inner optimizer skips non-finite steps (AMP).
    fn amp_skip(&self) -> bool {
        self.inner.amp().is_some_and(|a| a.skip_non_finite)
    }

    /// Takes back the count of the last step if the AMP guard skipped it.
    fn settle_amp(&mut self) -> Result<()> {
        if std::mem::take(&mut self.amp_pending) && self.inner.found_inf()? == Some(true) {
            self.steps = self.steps.wrapping_sub(1);
        }
        Ok(())
    }

    /// Syncs now, outside the schedule and without counting a step (timm's
    /// `sync_lookahead()`: for example to evaluate the slow weights at the end of training),
    /// resetting the inner state too when configured. Refused while a Schedule-Free group is
    /// in eval mode.
    pub fn sync_now(&mut self, arena: &ParamArena) -> Result<()> {
        self.check_arena(arena)?;
        self.inner.book().check_train_mode()?;
        self.prepare_sync();
        self.submit(|s, enc| s.record(enc));
        self.finish_sync();
        Ok(())
    }

    /// Starts the slow weights afresh from the current params: the paper variant copies the
    /// wrapped tensors' params into them (call it after loading params into the arena), the
    /// timm variant forgets them (each is created again at its next sync).
    pub fn reset_slow(&mut self, arena: &ParamArena) -> Result<()> {
        self.check_arena(arena)?;
        match self.config.variant {
            LookaheadVariant::Paper => self.submit(|s, enc| s.record_copies(enc)),
            LookaheadVariant::Timm => self.ready.fill(false),
        }
        Ok(())
    }

    /// One wrapped tensor's slow weights, read back. [`Error::NotWrapped`] for a tensor this
    /// Lookahead does not wrap; [`Error::UnknownState`] (`"lookahead_slow_buff"`) in the timm
    /// variant before the tensor's first sync, when timm has no slow buffer for it yet.
    pub fn read_slow(&self, tensor: &str) -> Result<Vec<f32>> {
        let (i, k) = wrapped_index(&self.arena_layout, &self.local_of, tensor)?;
        check_slow_ready(self.ready[k])?;
        let off = self.sync.layout.state_offsets()[k];
        readback::read_f32(
            &self.ctx,
            &self.sync.slow,
            off as u64,
            self.arena_layout.tensors()[i].len,
        )
    }

    /// The whole slow-weights buffer in [`Lookahead::slow_layout`] order, padding included
    /// (what a checkpoint saves, with [`Lookahead::steps`] and [`Lookahead::slow_ready`]).
    pub fn read_slow_image(&self) -> Result<Vec<f32>> {
        readback::read_f32(
            &self.ctx,
            &self.sync.slow,
            0,
            self.sync.layout.state_elements() as usize,
        )
    }

    /// Overwrites the slow-weights buffer with an image from [`Lookahead::read_slow_image`]
    /// (its length checked first: [`Error::LengthMismatch`]). Padding must be zero.
    pub fn write_slow_image(&mut self, image: &[f32]) -> Result<()> {
        self.ctx.check_alive()?;
        let want = self.sync.layout.state_elements() as usize;
        if image.len() != want {
            return Err(Error::LengthMismatch {
                what: "lookahead slow image".into(),
                expected: want,
                got: image.len(),
            });
        }
        if want > 0 {
            self.ctx
                .queue()
                .write_buffer(&self.sync.slow, 0, bytemuck::cast_slice(image));
        }
        Ok(())
    }

    /// Where each wrapped tensor's slow weights sit: its members are the wrapped tensors'
    /// arena indices, ascending, and its state offsets their places in the slow image.
    pub fn slow_layout(&self) -> &SegmentLayout {
        &self.sync.layout
    }

    /// Per wrapped tensor (in [`Lookahead::slow_layout`] order): whether its slow weights exist
    /// (always true for the paper variant; timm creates them at a tensor's first sync).
    pub fn slow_ready(&self) -> &[bool] {
        &self.ready
    }

    /// Restores [`Lookahead::slow_ready`] (its length checked first).
    pub fn set_slow_ready(&mut self, ready: &[bool]) -> Result<()> {
        restore_ready(&mut self.ready, ready)
    }

    /// Lookahead steps taken (timm's `lookahead_step`); a sync follows each multiple of `k`.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the step counter (restoring a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Bytes of GPU memory the slow weights take.
    pub fn slow_bytes(&self) -> u64 {
        self.sync.slow.size()
    }

    /// Dispatches a sync records (one per binding window of the wrapped tensors).
    pub fn dispatches_per_sync(&self) -> usize {
        self.sync.dispatches()
    }

    /// The settings.
    pub fn config(&self) -> &LookaheadConfig {
        &self.config
    }

    /// The inner optimizer.
    pub fn inner(&self) -> &Optimizer {
        &self.inner
    }

    /// The inner optimizer, for its lr, groups, frozen flags and clipper. Stepping it directly
    /// bypasses the Lookahead's counter.
    pub fn inner_mut(&mut self) -> &mut Optimizer {
        &mut self.inner
    }

    /// Unwraps the inner optimizer (the slow weights are dropped).
    pub fn into_inner(self) -> Optimizer {
        self.inner
    }
}

/// The CPU twin of [`Lookahead`] around a [`CpuOptimizer`]: the same variants, counter, modes
/// and sync formula ([`sync_tensor`]) on host slices, and the same state reset.
#[derive(Debug)]
pub struct CpuLookahead {
    inner: CpuOptimizer,
    config: LookaheadConfig,
    members: Vec<usize>,
    local_of: Vec<Option<usize>>,
    slow: Vec<Vec<f32>>,
    ready: Vec<bool>,
    steps: u64,
}

impl CpuLookahead {
    /// Wraps every tensor `optimizer` updates; `params` (one slice per tensor, in arena order)
    /// are copied as the paper variant's slow weights.
    pub fn new<P: AsRef<[f32]>>(
        optimizer: CpuOptimizer,
        config: LookaheadConfig,
        params: &[P],
    ) -> Result<Self> {
        Self::with_selection(optimizer, config, params, Select::All)
    }

    /// Wraps the tensors `select` picks among those `optimizer` updates, as
    /// [`Lookahead::with_selection`].
    pub fn with_selection<P: AsRef<[f32]>>(
        optimizer: CpuOptimizer,
        config: LookaheadConfig,
        params: &[P],
        select: Select,
    ) -> Result<Self> {
        config.validate()?;
        optimizer.layout().pack(params)?;
        let members = wrapped(optimizer.layout(), optimizer.book(), &select)?;
        let paper = config.variant == LookaheadVariant::Paper;
        let slow = members
            .iter()
            .map(|&i| {
                if paper {
                    params[i].as_ref().to_vec()
                } else {
                    vec![0.0; params[i].as_ref().len()]
                }
            })
            .collect();
        Ok(Self {
            local_of: local_index(params.len(), &members),
            ready: vec![paper; members.len()],
            inner: optimizer,
            config,
            members,
            slow,
            steps: 0,
        })
    }

    fn sync<P: AsMut<[f32]>>(&mut self, params: &mut [P]) {
        let alpha = self.config.alpha as f32;
        for (k, &i) in self.members.iter().enumerate() {
            let frozen = self.inner.book().frozen[i];
            let mode = sync_mode(self.config.variant, frozen, self.ready[k]);
            sync_tensor(alpha, mode, params[i].as_mut(), &mut self.slow[k]);
            self.ready[k] |= mode == LOOKAHEAD_INIT;
        }
        if self.config.reset_state {
            self.inner.reset_tensors(&self.members);
        }
    }

    fn check_params<P: AsMut<[f32]>>(&self, params: &mut [P]) -> Result<()> {
        let layout = self.inner.layout();
        if params.len() != layout.tensors().len() {
            return Err(Error::LengthMismatch {
                what: "params (number of tensors)".into(),
                expected: layout.tensors().len(),
                got: params.len(),
            });
        }
        for (t, p) in layout.tensors().iter().zip(params.iter_mut()) {
            let n = p.as_mut().len();
            if n != t.len {
                return Err(Error::LengthMismatch {
                    what: t.name.clone(),
                    expected: t.len,
                    got: n,
                });
            }
        }
        Ok(())
    }

    /// One step: the inner optimizer's, then the sync on every `k`-th step. On error nothing
    /// changes.
    pub fn step<P: AsMut<[f32]>, G: AsRef<[f32]>>(
        &mut self,
        params: &mut [P],
        grads: &[G],
    ) -> Result<()> {
        self.inner.step(params, grads)?;
        let skipped = self.inner.amp().is_some_and(|cfg| cfg.skip_non_finite)
            && self.inner.found_inf() == Some(true);
        if skipped {
            // As Lookahead::step: a step the AMP guard skipped is not counted.
            return Ok(());
        }
        self.steps = self.steps.wrapping_add(1);
        if self.steps % self.config.k == 0 {
            self.sync(params);
        }
        Ok(())
    }

    /// Syncs now without counting a step, as [`Lookahead::sync_now`].
    pub fn sync_now<P: AsMut<[f32]>>(&mut self, params: &mut [P]) -> Result<()> {
        self.check_params(params)?;
        self.inner.book().check_train_mode()?;
        self.sync(params);
        Ok(())
    }

    /// Starts the slow weights afresh, as [`Lookahead::reset_slow`].
    pub fn reset_slow<P: AsMut<[f32]>>(&mut self, params: &mut [P]) -> Result<()> {
        self.check_params(params)?;
        match self.config.variant {
            LookaheadVariant::Paper => {
                for (k, &i) in self.members.iter().enumerate() {
                    self.slow[k].copy_from_slice(params[i].as_mut());
                }
            }
            LookaheadVariant::Timm => self.ready.fill(false),
        }
        Ok(())
    }

    fn local(&self, tensor: &str) -> Result<usize> {
        wrapped_index(self.inner.layout(), &self.local_of, tensor).map(|(_, k)| k)
    }

    /// One wrapped tensor's slow weights, with [`Lookahead::read_slow`]'s errors.
    pub fn read_slow(&self, tensor: &str) -> Result<Vec<f32>> {
        let k = self.local(tensor)?;
        check_slow_ready(self.ready[k])?;
        Ok(self.slow[k].clone())
    }

    /// Overwrites one wrapped tensor's slow weights (length checked first); marks them as
    /// existing.
    pub fn write_slow(&mut self, tensor: &str, data: &[f32]) -> Result<()> {
        let k = self.local(tensor)?;
        if data.len() != self.slow[k].len() {
            return Err(Error::LengthMismatch {
                what: tensor.to_string(),
                expected: self.slow[k].len(),
                got: data.len(),
            });
        }
        self.slow[k].copy_from_slice(data);
        self.ready[k] = true;
        Ok(())
    }

    /// The wrapped tensors' arena indices, ascending.
    pub fn wrapped(&self) -> &[usize] {
        &self.members
    }

    /// Per wrapped tensor: whether its slow weights exist, as [`Lookahead::slow_ready`].
    pub fn slow_ready(&self) -> &[bool] {
        &self.ready
    }

    /// Restores [`CpuLookahead::slow_ready`] (its length checked first).
    pub fn set_slow_ready(&mut self, ready: &[bool]) -> Result<()> {
        restore_ready(&mut self.ready, ready)
    }

    /// Lookahead steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the step counter (restoring a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// The settings.
    pub fn config(&self) -> &LookaheadConfig {
        &self.config
    }

    /// The inner optimizer.
    pub fn inner(&self) -> &CpuOptimizer {
        &self.inner
    }

    /// The inner optimizer, for its lr, groups, frozen flags and state.
    pub fn inner_mut(&mut self) -> &mut CpuOptimizer {
        &mut self.inner
    }

    /// Unwraps the inner optimizer.
    pub fn into_inner(self) -> CpuOptimizer {
        self.inner
    }
}

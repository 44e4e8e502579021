//! What the hypergradient rules ([`super::sgd_hd`], [`super::adam_hd`]) share: the scope, the
//! flags, the validation of the hypergradient terms, and the CPU twins of `shaders/hd.wgsl`
//! (the per-chunk dot `<g, d_prev>`, the per-group fold and the lr update). Each rule keeps its
//! own direction and update.

use crate::error::{check_non_negative, Result};
use crate::shaders::{CHUNK, RED_LANES, RED_SIZE, RED_VEC};

use super::rule::HyperCtx;

/// WGSL `HD_GLOBAL` (hd.wgsl): the dot runs over every tensor of the segment.
pub const HD_GLOBAL: u32 = 1024;
/// WGSL `HD_RESET` (hd.wgsl): this step restarts the learned lr from the configured lr.
pub const HD_RESET: u32 = 2048;

/// Over which tensors the hypergradient dot of a group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HdScope {
    /// Every tensor of the optimizer's segment of this family (the paper's and the reference
    /// code's global dot, for a one-group optimizer). Default.
    #[default]
    Global,
    /// The group's own tensors: each group's lr descends on its own hypergradient.
    Group,
}

/// The fields of a rule's per-group uniform that hd.wgsl's `hd_lr` reads (`hypers[gi]`).
pub(crate) trait HdHyper {
    /// `(flags, lr, hypergrad_lr)`: the flags (HD_GLOBAL, HD_RESET, ...), the configured lr
    /// (what a reset restarts from) and beta.
    fn lr_terms(&self) -> (u32, f32, f32);
}

/// The hypergradient flags of a group: scope and reset.
pub(crate) fn hd_flags(scope: HdScope, ctx: HyperCtx) -> u32 {
    let mut flags = ctx.extra_flags;
    if scope == HdScope::Global {
        flags |= HD_GLOBAL;
    }
    if ctx.lr_set {
        flags |= HD_RESET;
    }
    flags
}

/// Checks the terms both rules validate last, in this order: the L2 penalty and the
/// hypergradient learning rate.
pub(crate) fn check_decay_and_hypergrad_lr(weight_decay: f64, hypergrad_lr: f64) -> Result<()> {
    check_non_negative("weight_decay", weight_decay)?;
    check_non_negative("hypergrad_lr", hypergrad_lr)
}

/// `g + wd * p` when weight decay is on (hd.wgsl's `with_decay`).
#[inline]
pub(crate) fn with_decay(g: f32, p: f32, wd: f32) -> f32 {
    if wd != 0.0 {
        g + wd * p
    } else {
        g
    }
}

/// reduce.wgsl's `chunk_lanes`: the virtual lanes a chunk of `len` elements folds.
fn chunk_lanes(len: usize) -> usize {
    let active = (RED_LANES as usize).min(len.div_ceil(4));
    active.div_ceil(16).max(1) * 16
}

/// reduce.wgsl's `fold_scratch` on the x component of `lanes` (a multiple of 16, 16..=256
/// of them): sums of 16 consecutive lanes each, then the sums in order.
fn workgroup_sum(lanes: &[f32]) -> f32 {
    let mut total = 0.0f32;
    for (j, group) in lanes.chunks(16).enumerate() {
        let mut acc = group[0];
        for &x in &group[1..] {
            acc += x;
        }
        total = if j == 0 { acc } else { total + acc };
    }
    total
}

/// CPU twin of the kernels' per-chunk dot (`hd_dot` passes): for each chunk of `CHUNK`
/// elements of a tensor of `len` elements, virtual lane `lid` sums the lane dots
/// `((x0 + x1) + x2) + x3` (x = `prod(i)`, 0 past the end) of its vec4s `k * RED_LANES + lid`,
/// then the lanes that hold terms, rounded up to groups of 16 (`chunk_lanes`), are folded
/// (`store_chunk_partial`). Appends one value per chunk.
fn chunk_dots(len: usize, prod: impl Fn(usize) -> f32, out: &mut Vec<f32>) {
    let mut lanes = vec![0f32; RED_LANES as usize];
    let mut start = 0usize;
    while start < len {
        let clen = (len - start).min(CHUNK as usize);
        for (lid, lane) in lanes.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for k in 0..RED_VEC as usize {
                let v = k * RED_LANES as usize + lid;
                if v * 4 >= clen {
                    break;
                }
                let x = |j: usize| {
                    let e = v * 4 + j;
                    if e < clen {
                        prod(start + e)
                    } else {
                        0.0
                    }
                };
                acc += ((x(0) + x(1)) + x(2)) + x(3);
            }
            *lane = acc;
        }
        out.push(workgroup_sum(&lanes[..chunk_lanes(clen)]));
        start += clen;
    }
}

/// CPU twin of reduce.wgsl's `fold_group_chunks`: virtual lane `l` of RED_SIZE sums
/// the partials `l, l + RED_SIZE, ...` of group `group`'s chunks (every chunk's with `all`), in
/// order; then the workgroup reduction.
fn fold_group(partials: &[f32], chunk_groups: &[u32], group: u32, all: bool) -> f32 {
    let mut lanes = [0f32; RED_SIZE as usize];
    for (l, lane) in lanes.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for c in (l..partials.len()).step_by(RED_SIZE as usize) {
            if all || chunk_groups[c] == group {
                acc += partials[c];
            }
        }
        *lane = acc;
    }
    workgroup_sum(&lanes)
}

/// [`super::rule::Rule::chunk_partials`] of both rules (hd.wgsl's `hd_dot`): the chunk dots of
/// `g + wd * p` (`g`, `p` of one live tensor) with its previous direction `d_prev`.
pub(crate) fn chunk_partials(wd: f32, p: &[f32], g: &[f32], d_prev: &[f32], out: &mut Vec<f32>) {
    chunk_dots(p.len(), |i| with_decay(g[i], p[i], wd) * d_prev[i], out);
}

/// [`super::rule::Rule::group_update`] of both rules (hd.wgsl's `hd_lr`): h folded over the group's
/// (HD_GLOBAL: the segment's) chunks, then `alpha + hypergrad_lr * h`, alpha the learned lr or
/// (HD_RESET) the configured one.
pub(crate) fn group_update<H: HdHyper>(
    hypers: &[H],
    group: usize,
    partials: &[f32],
    chunk_groups: &[u32],
    learned: f32,
) -> f32 {
    let (flags, lr, beta) = hypers[group].lr_terms();
    let h = fold_group(partials, chunk_groups, group as u32, flags & HD_GLOBAL != 0);
    let alpha = if flags & HD_RESET != 0 { lr } else { learned };
    alpha + beta * h
}

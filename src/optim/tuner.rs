//! Times the work splits ([`KernelShape`]) of one rule on the context's adapter and records
//! the fastest in the context's shape book (src/tune.rs), which caches it on disk. Each
//! candidate is a complete [`Optimizer`] over one scratch tensor, built with the split forced,
//! and timed by `autotune`.

use super::{OptimizerConfig, ParamGroups, Rule, RuleVisitor};
use crate::arena::{ParamArena, TensorSpec};
use crate::autotune::{
    build_candidates, resolve_or_time, scratch_values, time_candidates, tune_now,
};
use crate::context::GpuContext;
use crate::error::Result;
use crate::optim::Optimizer;
use crate::tune::{KernelShape, ShapeChoice};

/// Whether rule `R` runs one elementwise pass (no reduction): the rules whose small tensors
/// share packed chunks.
pub(crate) fn elementwise<R: Rule>() -> bool {
    R::passes().len() == 1 && !R::KERNEL.uses_partials() && !own_segment::<R>()
}

/// Whether rule `R`'s per-chunk passes (and its swap kernel) take the adapter's split: every
/// rule of the generic segment. Those that reduce (LARS and LAMB norms, Lion and ADOPT
/// caution counts, hypergradient dots) run 256 virtual lanes whatever the split
/// (reduce.wgsl), so their sums keep one order and their bits.
pub(crate) fn tuned<R: Rule>() -> bool {
    !own_segment::<R>()
}

/// Whether rule `R` runs its own segment type rather than the generic chunked one: Muon
/// (batched matmuls) and Adafactor (one workgroup per tensor), whose shapes are their own.
pub(crate) fn own_segment<R: Rule>() -> bool {
    use std::any::TypeId;
    let r = TypeId::of::<R>();
    r == TypeId::of::<super::muon::MuonConfig>()
        || r == TypeId::of::<super::adafactor::AdafactorConfig>()
}

/// The split `R`'s kernel runs on this context: pinned, cached, or (policy `Auto`, nothing
/// cached) timed now on a scratch tensor with `config`'s settings and recorded.
pub(crate) fn shape_for<R: Rule>(ctx: &GpuContext, config: &R) -> Result<KernelShape> {
    resolve_or_time(ctx, R::KERNEL, KernelShape::default(), |elements| {
        time_rule(ctx, config, elements)
    })
}

/// Times every candidate split of `config`'s kernel on a scratch tensor of `elements`
/// (`None`: the adapter's default size), records the fastest in the context's shape book and
/// cache, whatever the policy, and returns the choice; `Ok(None)` for Muon and Adafactor,
/// whose own segments have their own shapes. For `optbench tune` and for users who
/// want the timing done at a moment of their choosing.
pub fn tune(
    ctx: &GpuContext,
    config: impl Into<OptimizerConfig>,
    elements: Option<usize>,
) -> Result<Option<ShapeChoice>> {
    let config = config.into();
    OptimizerConfig::visit(&[&config], Tune { ctx, elements })
}

struct Tune<'a> {
    ctx: &'a GpuContext,
    elements: Option<usize>,
}

impl RuleVisitor for Tune<'_> {
    type Out = Result<Option<ShapeChoice>>;
    fn visit<R: Rule>(self, configs: Vec<R>) -> Self::Out {
        let Some(config) = configs.first().filter(|_| tuned::<R>()) else {
            self.ctx.check_alive()?;
            return Ok(None);
        };
        tune_now(self.ctx, R::KERNEL, self.elements, |elements| {
            time_rule(self.ctx, config, elements)
        })
        .map(Some)
    }
}

fn time_rule<R: Rule>(ctx: &GpuContext, config: &R, elements: usize) -> Result<ShapeChoice> {
    let arena = ParamArena::new(ctx, &[TensorSpec::new("tune", elements)])?;
    let values = scratch_values(elements);
    arena.write_params("tune", &values)?;
    arena.write_grads("tune", &values)?;
    let arena = &arena;
    let candidates = build_candidates(ctx, KernelShape::default(), |shape| {
        let groups = ParamGroups::per_arena_group(arena.layout(), config.clone());
        let mut opt = Optimizer::build(ctx, arena, groups, Some(shape))?;
        Ok(move || opt.step(arena))
    })?;
    time_candidates(ctx, R::KERNEL.entry_point(), elements, candidates)
}

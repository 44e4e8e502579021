//! Times the work splits ([`KernelShape`]) of one rule on the context's adapter and records
//! the fastest in the context's shape book (src/tune.rs), which caches it on disk. Each
//! candidate is a complete [`Optimizer`] over one scratch tensor, built with the split forced,
//! and timed by `autotune`.

use super::table::{OptimizerConfig, Row, RuleVisitor};
use crate::autotune::tune_now;
use crate::context::GpuContext;
use crate::error::Result;
use crate::tune::ShapeChoice;

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
    fn visit<R: Row>(self, configs: Vec<R>) -> Self::Out {
        let Some(config) = configs.first().filter(|_| R::tuned()) else {
            self.ctx.check_alive()?;
            return Ok(None);
        };
        tune_now(self.ctx, R::KERNEL, self.elements, |elements| {
            super::gpu::time_rule(self.ctx, config, elements)
        })
        .map(Some)
    }
}

//! The CPU reference: the same [`Rule`]s, scalars and step bookkeeping as the GPU path, applied
//! tensor by tensor on host slices in the kernels' operation order. It is the definition the GPU
//! kernels are checked against, and is usable on its own (for example, to train without a GPU).

use crate::arena::TensorSpec;
use crate::error::{Error, Result};
use crate::optim::{GroupHyper, HyperCtx, Rule, StepBook};
use crate::shaders::KernelId;

/// A [`Rule`] run on the host. Owns the optimizer state; the caller owns params and grads.
#[derive(Debug, Clone)]
pub struct CpuOptimizer<R: Rule> {
    rule: R,
    hyper: R::Hyper,
    book: StepBook,
    lens: Vec<usize>,
    /// `state[slot][tensor]`; unused slots hold empty vectors.
    state: Vec<Vec<Vec<f32>>>,
    table: Vec<R::TensorStep>,
}

impl<R: Rule> CpuOptimizer<R> {
    /// State for tensors shaped like `specs`, initialised as PyTorch does.
    pub fn new(rule: R, specs: &[TensorSpec]) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::EmptyArena);
        }
        let book = StepBook::new(&rule, specs)?;
        let lens: Vec<usize> = specs.iter().map(|s| s.len).collect();
        let slots = R::KERNEL.state_slots() as usize;
        let mut state = vec![vec![Vec::new(); specs.len()]; slots];
        for s in rule.states() {
            state[s.slot as usize] = lens.iter().map(|&n| vec![s.init; n]).collect();
        }
        Ok(Self {
            hyper: rule.hyper(HyperCtx {
                extra_flags: 0,
                n_tensors: specs.len() as u32,
            }),
            rule,
            book,
            lens,
            state,
            table: Vec::with_capacity(specs.len()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &R {
        &self.rule
    }

    /// One step over every tensor. Lengths are checked before anything changes.
    pub fn step<P: AsMut<[f32]>, G: AsRef<[f32]>>(
        &mut self,
        params: &mut [P],
        grads: &[G],
    ) -> Result<()> {
        check_shapes(
            &self.lens,
            params.iter_mut().map(|p| p.as_mut().len()),
            "params",
        )?;
        check_shapes(&self.lens, grads.iter().map(|g| g.as_ref().len()), "grads")?;
        self.book.advance(&self.rule, &mut self.table);
        let slots = self.state.len();
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            if self.book.frozen[i] {
                continue;
            }
            let mut views: Vec<&mut [f32]> = Vec::with_capacity(slots);
            for slot in self.state.iter_mut() {
                match slot.get_mut(i) {
                    Some(v) => views.push(v.as_mut_slice()),
                    None => views.push(&mut []),
                }
            }
            R::update(
                &self.hyper,
                &self.table[i],
                p.as_mut(),
                g.as_ref(),
                &mut views,
            );
        }
        Ok(())
    }

    /// Freezes or unfreezes tensor `i` (by index) for the following steps.
    pub fn set_frozen_index(&mut self, i: usize, frozen: bool) -> Result<()> {
        let n = self.lens.len();
        *self
            .book
            .frozen
            .get_mut(i)
            .ok_or_else(|| Error::UnknownTensor(format!("#{i} of {n}")))? = frozen;
        Ok(())
    }

    /// Freezes or unfreezes a tensor by name.
    pub fn set_frozen(&mut self, tensor: &str, frozen: bool) -> Result<()> {
        let i = self.book.index_of(tensor)?;
        self.book.frozen[i] = frozen;
        Ok(())
    }

    /// One tensor's slice of a state buffer (PyTorch names).
    pub fn state(&self, name: &str, tensor: usize) -> Result<&[f32]> {
        let spec = self
            .rule
            .states()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownState {
                name: name.to_string(),
                available: self.rule.states().iter().map(|s| s.name).collect(),
            })?;
        self.state[spec.slot as usize]
            .get(tensor)
            .map(|v| v.as_slice())
            .ok_or_else(|| Error::UnknownTensor(format!("#{tensor}")))
    }

    /// Steps tensor `i` has taken.
    pub fn step_count(&self, i: usize) -> Option<u64> {
        self.book.steps.get(i).copied()
    }

    /// Sets every group's learning rate.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.book.set_lr(lr)
    }

    /// Replaces one group's hyperparameters.
    pub fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()> {
        self.book.set_group(group, h)
    }
}

fn check_shapes(
    lens: &[usize],
    got: impl ExactSizeIterator<Item = usize>,
    what: &str,
) -> Result<()> {
    if got.len() != lens.len() {
        return Err(Error::LengthMismatch {
            what: format!("{what} (number of tensors)"),
            expected: lens.len(),
            got: got.len(),
        });
    }
    for (i, (n, &want)) in got.zip(lens).enumerate() {
        if n != want {
            return Err(Error::LengthMismatch {
                what: format!("{what}[{i}]"),
                expected: want,
                got: n,
            });
        }
    }
    Ok(())
}

/// Object-safe view of a CPU optimizer.
pub trait DynCpuOptimizer {
    /// Short name.
    fn name(&self) -> &'static str;
    /// The kernel the GPU twin runs.
    fn kernel(&self) -> KernelId;
    /// See [`CpuOptimizer::step`].
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<()>;
    /// See [`CpuOptimizer::state`].
    fn state(&self, name: &str, tensor: usize) -> Result<&[f32]>;
    /// State names kept.
    fn state_names(&self) -> Vec<&'static str>;
    /// See [`CpuOptimizer::set_frozen_index`].
    fn set_frozen_index(&mut self, i: usize, frozen: bool) -> Result<()>;
    /// See [`CpuOptimizer::step_count`].
    fn step_count(&self, i: usize) -> Option<u64>;
    /// See [`CpuOptimizer::set_lr`].
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// See [`CpuOptimizer::set_group`].
    fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()>;
}

impl<R: Rule> DynCpuOptimizer for CpuOptimizer<R> {
    fn name(&self) -> &'static str {
        self.rule.name()
    }
    fn kernel(&self) -> KernelId {
        R::KERNEL
    }
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<()> {
        CpuOptimizer::step(self, params, grads)
    }
    fn state(&self, name: &str, tensor: usize) -> Result<&[f32]> {
        CpuOptimizer::state(self, name, tensor)
    }
    fn state_names(&self) -> Vec<&'static str> {
        self.rule.states().iter().map(|s| s.name).collect()
    }
    fn set_frozen_index(&mut self, i: usize, frozen: bool) -> Result<()> {
        CpuOptimizer::set_frozen_index(self, i, frozen)
    }
    fn step_count(&self, i: usize) -> Option<u64> {
        CpuOptimizer::step_count(self, i)
    }
    fn set_lr(&mut self, lr: f64) -> Result<()> {
        CpuOptimizer::set_lr(self, lr)
    }
    fn set_group(&mut self, group: usize, h: GroupHyper) -> Result<()> {
        CpuOptimizer::set_group(self, group, h)
    }
}

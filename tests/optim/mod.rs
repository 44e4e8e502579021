//! Per-family optimizer tests: each family against its PyTorch / timm / reference fixtures and
//! the GPU against the CPU twin.

mod adadelta_asgd_rprop;
mod adafactor;
mod hypergradient;
mod lion_adopt;
mod muon;
mod nadam_radam_adamax;
mod schedule_free;

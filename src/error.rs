//! The crate's error type. Every public entry point checks its inputs before it encodes or writes
//! anything, so an `Err` always means params and optimizer state are exactly as they were.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in wgpu-optim.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// No adapter matched. `detail` lists what was found; the message says how to get a driver.
    #[error(
        "no GPU adapter found ({detail}). On Linux without a GPU install a software Vulkan driver \
         (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`, or run \
         scripts/setup-vulkan.sh); check WGPU_OPTIM_ADAPTER if it is set"
    )]
    NoAdapter {
        /// What was tried and what was seen.
        detail: String,
    },
    /// The adapter refused to create a device.
    #[error("request_device failed: {0}")]
    RequestDevice(String),
    /// A hyperparameter is NaN, infinite or outside the range PyTorch accepts.
    #[error("invalid hyperparameter {name} = {value}: {reason}")]
    InvalidHyperparameter {
        /// Field name, as in the config struct (and PyTorch).
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The accepted range.
        reason: &'static str,
    },
    /// A combination of options PyTorch rejects (e.g. Nesterov without momentum).
    #[error("invalid optimizer configuration: {0}")]
    InvalidConfig(&'static str),
    /// No tensor with this name in the arena.
    #[error("unknown tensor {0:?}")]
    UnknownTensor(String),
    /// Two tensors with the same name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// This optimizer keeps no state buffer with this name.
    #[error("unknown state buffer {name:?}; this optimizer keeps {available:?}")]
    UnknownState {
        /// The requested name.
        name: String,
        /// The state names this optimizer keeps (PyTorch's names).
        available: Vec<&'static str>,
    },
    /// A parameter group index out of range.
    #[error("unknown parameter group {group}; there are {groups} group(s)")]
    UnknownGroup {
        /// Requested group.
        group: usize,
        /// Number of groups.
        groups: usize,
    },
    /// A tensor was selected by two parameter groups of one optimizer.
    #[error("tensor {tensor:?} is selected by parameter groups {first} and {second}; a tensor belongs to at most one")]
    TensorInTwoGroups {
        /// The tensor.
        tensor: String,
        /// The group that selected it first.
        first: usize,
        /// The group that selected it again.
        second: usize,
    },
    /// A group's new configuration is for another algorithm than the group's segment runs.
    #[error("parameter group {group} runs {expected}; a {got} configuration cannot replace it")]
    RuleMismatch {
        /// The group.
        group: usize,
        /// The algorithm family of the group.
        expected: &'static str,
        /// The algorithm family of the rejected configuration.
        got: &'static str,
    },
    /// A count, index or size from the caller is over a limit of the library or the device.
    #[error("{what} is {value}, over the limit of {limit} ({why})")]
    LimitExceeded {
        /// What was too large.
        what: String,
        /// The value given.
        value: u64,
        /// The largest accepted value.
        limit: u64,
        /// Which limit this is.
        why: &'static str,
    },
    /// A tensor's shape does not multiply out to its length.
    #[error(
        "shape {shape:?} of tensor {tensor:?} has {product} elements, but the tensor has {len}"
    )]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The product of the shape (saturated at `u64::MAX`).
        product: u64,
        /// The tensor's length.
        len: usize,
    },
    /// A read past the end of a buffer.
    #[error("{what}: elements {offset}..{offset}+{len} are past the end ({available} elements)")]
    OutOfBounds {
        /// Which buffer.
        what: String,
        /// First element requested.
        offset: u64,
        /// Elements requested.
        len: u64,
        /// Elements the buffer holds.
        available: u64,
    },
    /// The gradient norm was NaN or infinite and `error_if_nonfinite` is set; nothing was
    /// updated and no step count advanced.
    #[error("the total {norm_type} norm of the gradients is {norm}; clipping with error_if_nonfinite refused the step")]
    NonFiniteNorm {
        /// The norm (NaN or infinite).
        norm: f32,
        /// "L2" or "inf".
        norm_type: &'static str,
    },
    /// The device was lost (or destroyed); every object built on it now returns this error.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// A kernel binds more storage buffers than the device grants per shader stage
    /// (`max_storage_buffers_per_shader_stage`; WebGPU's default is 8). Mixed-precision
    /// kernels bind one more than their f32 twins (the 16-bit model copy).
    #[error(
        "kernel {kernel} binds {needed} storage buffers, over the device's \
         max_storage_buffers_per_shader_stage of {limit}"
    )]
    StorageBufferLimit {
        /// The kernel's entry point.
        kernel: &'static str,
        /// Storage buffers it binds.
        needed: u32,
        /// What the device grants.
        limit: u32,
    },
    /// An option the call cannot honour, with the reason.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Host data does not match the tensor (or arena) length.
    #[error("length mismatch for {what}: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// Tensor name or "arena".
        what: String,
        /// Elements the tensor holds.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// An arena needs at least one tensor.
    #[error("an arena needs at least one tensor")]
    EmptyArena,
    /// A buffer would exceed a device limit.
    #[error("{what} needs {bytes} bytes, over the device limit of {limit} bytes")]
    BufferTooLarge {
        /// Which buffer.
        what: String,
        /// Bytes required.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// An object was used with an arena (or clipper) other than the one it was built for.
    #[error("this object was built for arena id {expected}, got arena id {got}")]
    ArenaMismatch {
        /// Arena id the optimizer was built for.
        expected: u64,
        /// Arena id passed.
        got: u64,
    },
    /// Mapping a buffer for readback failed.
    #[error("buffer map failed: {0}")]
    Map(String),
    /// wgpu reported a validation error (names the kernel through the object labels).
    #[error("wgpu validation error: {0}")]
    Validation(String),
    /// wgpu ran out of memory.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed, and the OS error.
        message: String,
    },
    /// A checkpoint's bytes are not a valid checkpoint (truncated, bad header, wrong dtype,
    /// a value out of range, ...).
    #[error("corrupt checkpoint: {0}")]
    CorruptCheckpoint(String),
    /// A valid checkpoint that does not fit this optimizer; the message names the first
    /// difference.
    #[error("the checkpoint does not match this optimizer: {0}")]
    CheckpointMismatch(String),
    /// A tensor a Lookahead does not wrap: it keeps no slow weights for it.
    #[error("tensor {0:?} is not wrapped by this Lookahead (it keeps no slow weights for it)")]
    NotWrapped(String),
    /// A learning-rate schedule's parameter PyTorch rejects (its `ValueError`, or a value it
    /// would divide by zero with), or a schedule driven in a way it cannot follow.
    #[error("invalid {schedule}: {reason}")]
    InvalidSchedule {
        /// PyTorch's class name of the schedule (`"OneCycleLR"`).
        schedule: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A problem of a batched matmul stage is malformed: a region past the end of the data,
    /// or an output that overlaps what the stage reads or writes elsewhere.
    #[error("matmul problem {problem}: {reason}")]
    InvalidMatmul {
        /// Index of the problem in the stage.
        problem: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A matrix-only optimizer (Muon) was given a tensor that is not 2-D.
    #[error("tensor {tensor:?} has shape {shape:?}; {optimizer} only optimizes 2-D tensors")]
    NotAMatrix {
        /// The tensor.
        tensor: String,
        /// Its shape (`None`: the tensor was declared without one).
        shape: Option<Vec<usize>>,
        /// The optimizer that refused it.
        optimizer: &'static str,
    },
}

impl Error {
    pub(crate) fn hyper(name: &'static str, value: f64, reason: &'static str) -> Self {
        Error::InvalidHyperparameter {
            name,
            value,
            reason,
        }
    }
}

/// `value` must be finite and `>= 0` (PyTorch's `not 0.0 <= x` check, which also rejects NaN).
pub(crate) fn check_non_negative(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::hyper(name, value, "must be finite and >= 0"))
    }
}

/// `value` must be finite and in `[0, 1)` (PyTorch's beta check).
pub(crate) fn check_unit_interval(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::hyper(name, value, "must be in [0, 1)"))
    }
}

/// `value` must be finite (any sign).
pub(crate) fn check_finite(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::hyper(name, value, "must be finite"))
    }
}

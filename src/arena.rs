//! The multi-tensor arena. [`ParamLayout`] is pure data: where each tensor lives in one flat
//! f32 buffer, the chunk table that lets one dispatch cover every tensor, and the binding
//! windows for arenas larger than one storage binding. [`SegmentLayout`] is the same for a
//! subset of the tensors (one optimizer segment), whose state buffers hold only those tensors.
//! [`ParamArena`] owns the params and grads buffers for a layout.
//!
//! Invariants: tensors are stored in the order given, each starting on a 4-element (vec4)
//! boundary; the gap between a tensor's end and the next start is padding, zero at creation and
//! never written by a kernel (stores are lane-masked). A chunk covers at most `CHUNK` elements
//! of exactly one tensor. Windows cover whole chunks, start on the device's storage offset
//! alignment and span at most `max_binding_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::precision::{HalfPath, Precision, PrecisionOptions, StorageType};
use crate::readback;
use crate::shaders::CHUNK;

/// Largest parameter-group index an arena accepts (group indices are dense, so this also
/// bounds the number of groups an optimizer keeps host state for).
pub const MAX_GROUP: usize = 65_535;

/// Largest number of vec4s in an arena buffer: kernels index vec4s with `u32`, so an arena
/// holds at most `4 * u32::MAX` f32 elements (64 GiB), before any device limit.
pub const MAX_ARENA_VECS: u64 = u32::MAX as u64;

/// One tensor of a model: a name, its element count, its parameter group and optionally its
/// shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Unique name (for example `"layer1.weight"`).
    pub name: String,
    /// Number of f32 elements (0 is allowed, as in PyTorch).
    pub len: usize,
    /// Parameter group of [`crate::Optimizer::new`]'s one-rule shorthand (each group gets its
    /// own copy of the configuration, so its lr and every other hyperparameter can be changed
    /// alone).
    pub group: usize,
    /// Row-major shape (`[out, in]` for a linear layer's weight); `None` for a flat tensor.
    /// Its product must equal `len`. Matrix-aware optimizers and checkpoints read it.
    pub shape: Option<Vec<usize>>,
}

impl TensorSpec {
    /// A flat tensor in group 0.
    pub fn new(name: impl Into<String>, len: usize) -> Self {
        Self {
            name: name.into(),
            len,
            group: 0,
            shape: None,
        }
    }

    /// A tensor of the given row-major shape (length = product of the dims) in group 0.
    /// A product that overflows `usize` is rejected when the arena is laid out.
    pub fn shaped(name: impl Into<String>, shape: &[usize]) -> Self {
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        Self {
            name: name.into(),
            len,
            group: 0,
            shape: Some(shape.to_vec()),
        }
    }

    /// The same tensor in parameter group `group`.
    pub fn in_group(mut self, group: usize) -> Self {
        self.group = group;
        self
    }

    /// The same tensor with a row-major shape (checked against `len` when laid out).
    pub fn with_shape(mut self, shape: &[usize]) -> Self {
        self.shape = Some(shape.to_vec());
        self
    }

    fn check(&self) -> Result<()> {
        if self.group > MAX_GROUP {
            return Err(Error::LimitExceeded {
                what: format!("parameter group of tensor {:?}", self.name),
                value: self.group as u64,
                limit: MAX_GROUP as u64,
                why: "group indices are dense; wgpu_optim::arena::MAX_GROUP",
            });
        }
        if let Some(shape) = &self.shape {
            let product = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            if product != self.len as u64 {
                return Err(Error::ShapeMismatch {
                    tensor: self.name.clone(),
                    shape: shape.clone(),
                    product,
                    len: self.len,
                });
            }
        }
        Ok(())
    }
}

/// Where a tensor lives in the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// First element, counted from the start of the arena buffers.
    pub offset: usize,
    /// Element count.
    pub len: usize,
    /// Parameter group (of the one-rule shorthand).
    pub group: usize,
    /// Row-major shape, if the spec gave one.
    pub shape: Option<Vec<usize>>,
}

impl TensorInfo {
    /// Byte offset of the tensor in the params, f32 grads and state buffers (for a caller's own
    /// kernels that write gradients in place); in the 16-bit model and grads buffers of a
    /// mixed-precision arena it is half this.
    pub fn byte_offset(&self) -> u64 {
        self.offset as u64 * 4
    }
}

/// One row of the chunk table (mirrors `Chunk` in common.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ChunkEntry {
    /// Tensor index.
    pub tensor: u32,
    /// First vec4 of the chunk, from the start of the arena.
    pub start: u32,
    /// Elements in the chunk (1..=CHUNK; CHUNK < 2^16).
    pub len: u16,
    /// The chunk's tensor's parameter group among its segment's groups (< 2^15): the
    /// kernels load its hyperparameters alongside the tensor's scalars, not after them. Bit
    /// 15 ([`CHUNK_PACKED`]) marks a packed chunk, whose `tensor` is its first entry in the
    /// segment's per-vec4 info table ([`SegmentLayout::vec_info`]).
    pub group: u16,
    /// First vec4 of the chunk in the segment's state buffers (equal to `start` for the
    /// arena-wide table, whose "state" is any arena-shaped buffer).
    pub state_start: u32,
}

/// Largest tensor that packed chunks take: tensors of up to a quarter chunk, which would leave
/// at least three quarters of a plain chunk's workgroup idle. Larger ones keep plain chunks,
/// whose per-workgroup scalars are cheaper than a packed chunk's per-vec4 lookups (measured:
/// 16M elements over 10,000 tensors of ~1,600 is 1.26x one tensor's time with plain chunks,
/// 1.4x packed).
pub const PACK_MAX_LEN: usize = CHUNK as usize / 4;

/// The largest tensor worth packing for a kernel of `workgroup_size` invocations: 16 elements
/// (4 vec4s) per invocation, between 128 and [`PACK_MAX_LEN`]. A narrow workgroup leaves few
/// lanes idle on a small tensor's own chunk, so the per-vec4 lookups of a packed chunk stop
/// paying sooner: at 8 x 128 on lavapipe, 10,000 tensors of ~420 elements take 11.6 ms in
/// plain chunks against 15.5 ms packed, and of ~105 elements 4.15 packed (up to 128) against
/// 4.37 plain; at 256 x 4 the quarter-chunk limit was measured (see [`PACK_MAX_LEN`]).
pub fn pack_max_len(workgroup_size: u32) -> usize {
    (16 * workgroup_size as usize).clamp(128, PACK_MAX_LEN)
}

/// Bit of [`ChunkEntry::group`] marking a packed chunk (WGSL `CHUNK_PACKED`, bit 31 of the
/// row's third word).
pub const CHUNK_PACKED: u16 = 0x8000;

/// A tensor's range in a chunk table (mirrors `ChunkRange` in norm.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct ChunkRange {
    /// First chunk.
    pub first: u32,
    /// Number of chunks (0 for an empty tensor).
    pub count: u32,
}

/// Per-window uniform (mirrors `Window` in common.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct WindowUniform {
    /// First chunk of the window.
    pub chunk_base: u32,
    /// Chunks in the window.
    pub chunk_count: u32,
    /// First vec4 of the binding window.
    pub vec_base: u32,
    /// Index of the first per-tensor entry in the reduction buffer (= number of chunks).
    pub tensor_base: u32,
    /// First vec4 of the state binding window, counted from the start of the state buffers.
    pub state_base: u32,
    /// Tensors in the table (the per-tensor passes' grid covers exactly these).
    pub n_tensors: u32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// A range of the arena that fits one storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First chunk.
    pub chunk_base: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// First vec4 bound.
    pub vec_start: u64,
    /// One past the last vec4 bound.
    pub vec_end: u64,
    /// First vec4 bound of the state buffers.
    pub state_start: u64,
    /// One past the last vec4 bound of the state buffers.
    pub state_end: u64,
    /// Whether the window's chunks are packed (several small tensors each); a window holds
    /// chunks of one kind, so each kind runs its own specialised pipeline.
    pub packed: bool,
}

impl Window {
    /// Byte offset of the params / grads binding.
    pub fn byte_offset(&self) -> u64 {
        self.vec_start * 16
    }
    /// Byte size of the params / grads binding.
    pub fn byte_size(&self) -> u64 {
        (self.vec_end - self.vec_start) * 16
    }
    /// Byte offset of the state binding.
    pub fn state_byte_offset(&self) -> u64 {
        self.state_start * 16
    }
    /// Byte size of the state binding.
    pub fn state_byte_size(&self) -> u64 {
        (self.state_end - self.state_start) * 16
    }
    pub(crate) fn uniform(&self, tensor_base: u32, n_tensors: u32) -> WindowUniform {
        WindowUniform {
            chunk_base: self.chunk_base,
            chunk_count: self.chunk_count,
            vec_base: self.vec_start as u32,
            tensor_base,
            state_base: self.state_start as u32,
            n_tensors,
            pad: [0; 2],
        }
    }
}

/// The chunk table and binding windows of a subset of an arena's tensors (one optimizer
/// segment, or all of them). The segment's state buffers hold only its tensors, packed in
/// order on vec4 boundaries, so their size is proportional to what the segment optimizes.
#[derive(Debug, Clone)]
pub struct SegmentLayout {
    members: Vec<usize>,
    state_offsets: Vec<usize>,
    state_vecs: u64,
    chunks: Vec<ChunkEntry>,
    vec_info: Vec<u32>,
    ranges: Vec<ChunkRange>,
    windows: Vec<Window>,
}

impl SegmentLayout {
    /// Lays out `members` (arena tensor indices, in the order the segment keeps them) of
    /// `layout`, member `k` in segment group `groups[k]` (empty: all in group 0), for bindings
    /// of at most `max_binding_bytes`, window offsets on multiples of `offset_alignment`
    /// bytes.
    ///
    /// Runs of neighbouring tensors (next to each other in the arena) of 1 to `pack_max_len`
    /// elements (0: none; at most [`PACK_MAX_LEN`] apply; see [`pack_max_len`]) share packed
    /// chunks of up to [`CHUNK`] elements, so a model of many small tensors does not leave most
    /// of each workgroup idle. Only elementwise kernels read packed chunks; the
    /// [`SegmentLayout::ranges`] of packed tensors are empty.
    pub fn new(
        layout: &ParamLayout,
        members: Vec<usize>,
        groups: &[u16],
        max_binding_bytes: u64,
        offset_alignment: u64,
        pack_max_len: usize,
    ) -> Result<Self> {
        let pack_max_len = pack_max_len.min(PACK_MAX_LEN);
        let tensors = layout.tensors();
        let group_of = |local: usize| groups.get(local).copied().unwrap_or(0);
        let mut state_offsets = Vec::with_capacity(members.len());
        let mut chunks: Vec<ChunkEntry> = Vec::new();
        let mut vec_info: Vec<u32> = Vec::new();
        let mut ranges = Vec::with_capacity(members.len());
        let mut next = 0usize;
        // The packed chunk being filled: (its index in `chunks`, its vec4s, the arena element
        // where its last tensor ends).
        let mut open: Option<(usize, u32, usize)> = None;
        let chunk_vecs = CHUNK / 4;
        for (local, &i) in members.iter().enumerate() {
            let t = tensors
                .get(i)
                .ok_or_else(|| Error::UnknownTensor(format!("#{i}")))?;
            let first = chunks.len() as u32;
            if t.len > 0 && t.len <= pack_max_len {
                let vecs = t.len.div_ceil(4) as u32;
                // Joins the open packed chunk if it starts where the chunk's last tensor ends
                // (no other segment's tensor in between) and fits.
                let (c, n) = match open {
                    Some((c, n, end)) if end == t.offset && n + vecs <= chunk_vecs => (c, n),
                    _ => {
                        chunks.push(ChunkEntry {
                            tensor: vec_info.len() as u32,
                            start: (t.offset / 4) as u32,
                            len: 0,
                            group: CHUNK_PACKED,
                            state_start: (next / 4) as u32,
                        });
                        (chunks.len() - 1, 0)
                    }
                };
                for v in 0..vecs {
                    let lanes = (t.len as u32 - v * 4).min(4);
                    vec_info.push(local as u32 | ((lanes - 1) << 30));
                }
                chunks[c].len = ((n + vecs) * 4) as u16;
                open = Some((c, n + vecs, t.offset + t.len.next_multiple_of(4)));
                ranges.push(ChunkRange { first, count: 0 });
            } else {
                // An empty tensor takes no space, so it leaves the open packed chunk open.
                if t.len > 0 {
                    open = None;
                }
                let mut done = 0usize;
                while done < t.len {
                    let len = (t.len - done).min(CHUNK as usize);
                    chunks.push(ChunkEntry {
                        tensor: local as u32,
                        start: ((t.offset + done) / 4) as u32,
                        len: len as u16,
                        group: group_of(local),
                        state_start: ((next + done) / 4) as u32,
                    });
                    done += len;
                }
                ranges.push(ChunkRange {
                    first,
                    count: chunks.len() as u32 - first,
                });
            }
            state_offsets.push(next);
            // Cannot overflow: a segment is a subset of an arena that passed the same bound.
            next = (next + t.len).next_multiple_of(4);
        }
        // A packed chunk that took only one tensor becomes a plain one: the cheaper path.
        for c in &mut chunks {
            if c.group & CHUNK_PACKED == 0 {
                continue;
            }
            let info = &vec_info[c.tensor as usize..][..c.len as usize / 4];
            let tensor = info[0] & 0x3fff_ffff;
            if info.iter().all(|e| e & 0x3fff_ffff == tensor) {
                let t = &tensors[members[tensor as usize]];
                *c = ChunkEntry {
                    tensor,
                    start: c.start,
                    len: t.len as u16,
                    group: group_of(tensor as usize),
                    state_start: c.state_start,
                };
            }
        }
        // Plain chunks first, then packed ones, each in arena order: windows hold one kind,
        // and a model alternating weights and biases still gets one window of each.
        let is_packed = |c: &ChunkEntry| c.group & CHUNK_PACKED != 0;
        let n_plain = chunks.iter().filter(|c| !is_packed(c)).count() as u32;
        let mut new_index = Vec::with_capacity(chunks.len());
        let (mut p, mut q) = (0u32, n_plain);
        for c in &chunks {
            if is_packed(c) {
                new_index.push(q);
                q += 1;
            } else {
                new_index.push(p);
                p += 1;
            }
        }
        for r in ranges.iter_mut().filter(|r| r.count > 0) {
            r.first = new_index[r.first as usize];
        }
        let mut sorted = vec![ChunkEntry::zeroed(); chunks.len()];
        for (c, &k) in chunks.iter().zip(&new_index) {
            sorted[k as usize] = *c;
        }
        let chunks = sorted;
        // State buffers must not be empty, even for a segment of 0-length tensors.
        let state_vecs = (next as u64 / 4).max(1);
        let windows = split_windows(&chunks, max_binding_bytes, offset_alignment)?;
        Ok(Self {
            members,
            state_offsets,
            state_vecs,
            chunks,
            vec_info,
            ranges,
            windows,
        })
    }

    /// The per-vec4 info table of the packed chunks, stored right after the chunk rows: for
    /// each vec4, its segment-local tensor in bits 0..29 and its valid lanes - 1 in bits 30..31.
    pub fn vec_info(&self) -> &[u32] {
        &self.vec_info
    }

    /// Arena indices of the tensors, in segment order (the kernels' tensor index `i` is
    /// `members()[i]` in the arena).
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// Element offset of each member in the segment's state buffers.
    pub fn state_offsets(&self) -> &[usize] {
        &self.state_offsets
    }

    /// Elements of each state buffer of the segment, padding included.
    pub fn state_elements(&self) -> u64 {
        self.state_vecs * 4
    }

    /// Bytes of each state buffer of the segment.
    pub fn state_bytes(&self) -> u64 {
        self.state_vecs * 16
    }

    /// The chunk table (tensor indices are segment-local).
    pub fn chunks(&self) -> &[ChunkEntry] {
        &self.chunks
    }

    /// Each member's range in the chunk table.
    pub fn ranges(&self) -> &[ChunkRange] {
        &self.ranges
    }

    /// The binding windows (never empty).
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Whether the state buffers are laid out exactly as the params (every member at its
    /// arena offset, every window at the same range), as for a segment over the whole arena:
    /// the kernels then index state with the params index.
    pub fn state_at_params(&self, layout: &ParamLayout) -> bool {
        let tensors = layout.tensors();
        self.members
            .iter()
            .zip(&self.state_offsets)
            .all(|(&i, &off)| tensors[i].offset == off)
            && self
                .windows
                .iter()
                .all(|w| w.vec_start == w.state_start && w.vec_end == w.state_end)
    }
}

/// Splits a chunk table into windows whose params span and state span each fit one binding.
fn split_windows(chunks: &[ChunkEntry], max_binding_bytes: u64, align: u64) -> Result<Vec<Window>> {
    let max_vecs = max_binding_bytes / 16;
    let align_vecs = (align / 16).max(1);
    // A window must hold at least one whole chunk after aligning its start down.
    let needed = (CHUNK as u64 / 4 + align_vecs) * 16;
    if max_binding_bytes < needed {
        return Err(Error::BufferTooLarge {
            what: "one chunk plus offset alignment".into(),
            bytes: needed,
            limit: max_binding_bytes,
        });
    }
    let vecs = |c: &ChunkEntry| (c.len as u64).div_ceil(4);
    let end = |c: &ChunkEntry| c.start as u64 + vecs(c);
    let state_end = |c: &ChunkEntry| c.state_start as u64 + vecs(c);
    if chunks.is_empty() {
        // A table of empty tensors still gets one (empty) window, so every kernel family has
        // a bind group for its per-tensor and global passes.
        return Ok(vec![Window {
            chunk_base: 0,
            chunk_count: 0,
            vec_start: 0,
            vec_end: 1,
            state_start: 0,
            state_end: 1,
            packed: false,
        }]);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let vec_start = chunks[i].start as u64 / align_vecs * align_vecs;
        let state_start = chunks[i].state_start as u64 / align_vecs * align_vecs;
        let packed = chunks[i].group & CHUNK_PACKED != 0;
        let mut j = i + 1;
        while j < chunks.len()
            && (chunks[j].group & CHUNK_PACKED != 0) == packed
            && end(&chunks[j]) - vec_start <= max_vecs
            && state_end(&chunks[j]) - state_start <= max_vecs
        {
            j += 1;
        }
        out.push(Window {
            chunk_base: i as u32,
            chunk_count: (j - i) as u32,
            vec_start,
            vec_end: end(&chunks[j - 1]),
            state_start,
            state_end: state_end(&chunks[j - 1]),
            packed,
        });
        i = j;
    }
    Ok(out)
}

/// Tensor table, chunk table and binding windows of an arena. Pure data, testable on the CPU.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    groups: usize,
    total_vecs: u64,
    all: SegmentLayout,
}

impl ParamLayout {
    /// Bytes each arena buffer of `specs` would take, checked against the library's limits
    /// (vec4 indices are `u32`, group indices at most [`MAX_GROUP`], shapes match lengths)
    /// without allocating anything proportional to the sizes.
    pub fn required_bytes(specs: &[TensorSpec]) -> Result<u64> {
        if specs.is_empty() {
            return Err(Error::EmptyArena);
        }
        let mut vecs = 0u64;
        for s in specs {
            s.check()?;
            vecs = vecs.saturating_add((s.len as u64).div_ceil(4));
            if vecs > MAX_ARENA_VECS {
                return Err(Error::LimitExceeded {
                    what: "arena size in vec4s (up to and including tensor ".to_string()
                        + &format!("{:?})", s.name),
                    value: vecs,
                    limit: MAX_ARENA_VECS,
                    why: "kernels index vec4s with u32; wgpu_optim::arena::MAX_ARENA_VECS",
                });
            }
        }
        Ok(vecs.max(1) * 16)
    }

    /// Lays out `specs` for bindings of at most `max_binding_bytes`, with window offsets on
    /// multiples of `offset_alignment` bytes.
    pub fn new(
        specs: &[TensorSpec],
        max_binding_bytes: u64,
        offset_alignment: u64,
    ) -> Result<Self> {
        // Every size is checked before anything proportional to it is allocated.
        Self::required_bytes(specs)?;
        let mut tensors = Vec::with_capacity(specs.len());
        let mut index = HashMap::with_capacity(specs.len());
        let mut next = 0usize;
        for (i, s) in specs.iter().enumerate() {
            if index.insert(s.name.clone(), i).is_some() {
                return Err(Error::DuplicateTensor(s.name.clone()));
            }
            tensors.push(TensorInfo {
                name: s.name.clone(),
                offset: next,
                len: s.len,
                group: s.group,
                shape: s.shape.clone(),
            });
            next = (next + s.len).next_multiple_of(4);
        }
        let groups = specs.iter().map(|s| s.group).max().unwrap_or(0) + 1;
        // Buffers must not be empty, even for an arena of 0-length tensors.
        let total_vecs = (next as u64 / 4).max(1);
        let mut layout = Self {
            tensors,
            index,
            groups,
            total_vecs,
            all: SegmentLayout {
                members: Vec::new(),
                state_offsets: Vec::new(),
                state_vecs: 1,
                chunks: Vec::new(),
                vec_info: Vec::new(),
                ranges: Vec::new(),
                windows: Vec::new(),
            },
        };
        // All tensors packed in order: the state offsets equal the arena offsets.
        layout.all = SegmentLayout::new(
            &layout,
            (0..specs.len()).collect(),
            &[],
            max_binding_bytes,
            offset_alignment,
            0,
        )?;
        Ok(layout)
    }

    /// Tensors in arena order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Index of a tensor by name.
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        Ok(&self.tensors[self.index_of(name)?])
    }

    /// Number of parameter groups (highest group index + 1).
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Elements in each arena buffer, padding included.
    pub fn total_elements(&self) -> u64 {
        self.total_vecs * 4
    }

    /// Elements that belong to tensors (padding excluded).
    pub fn used_elements(&self) -> u64 {
        self.tensors.iter().map(|t| t.len as u64).sum()
    }

    /// Bytes of each arena buffer.
    pub fn buffer_bytes(&self) -> u64 {
        self.total_vecs * 16
    }

    /// The chunk table over every tensor.
    pub fn chunks(&self) -> &[ChunkEntry] {
        self.all.chunks()
    }

    /// The binding windows (one for arenas that fit in one binding; never empty).
    pub fn windows(&self) -> &[Window] {
        self.all.windows()
    }

    /// Every tensor as one segment (what the norm reducers run over).
    pub fn all(&self) -> &SegmentLayout {
        &self.all
    }

    /// Packs per-tensor host data into one padded arena image (padding zero).
    pub fn pack<T: AsRef<[f32]>>(&self, data: &[T]) -> Result<Vec<f32>> {
        if data.len() != self.tensors.len() {
            return Err(Error::LengthMismatch {
                what: "arena (number of tensors)".into(),
                expected: self.tensors.len(),
                got: data.len(),
            });
        }
        for (t, d) in self.tensors.iter().zip(data) {
            check_len(t, d.as_ref())?;
        }
        let mut out = vec![0f32; self.total_elements() as usize];
        for (t, d) in self.tensors.iter().zip(data) {
            out[t.offset..t.offset + t.len].copy_from_slice(d.as_ref());
        }
        Ok(out)
    }

    /// Splits an arena image into per-tensor vectors.
    pub fn unpack(&self, image: &[f32]) -> Result<Vec<Vec<f32>>> {
        if (image.len() as u64) < self.total_elements() {
            return Err(Error::LengthMismatch {
                what: "arena image".into(),
                expected: self.total_elements() as usize,
                got: image.len(),
            });
        }
        Ok(self
            .tensors
            .iter()
            .map(|t| image[t.offset..t.offset + t.len].to_vec())
            .collect())
    }
}

fn check_len(t: &TensorInfo, data: &[f32]) -> Result<()> {
    if data.len() != t.len {
        return Err(Error::LengthMismatch {
            what: t.name.clone(),
            expected: t.len,
            got: data.len(),
        });
    }
    Ok(())
}

/// GPU copies of a segment's chunk table and per-window uniforms.
/// Window `i`'s uniform sits at `i * stride` (the device's uniform offset alignment).
#[derive(Debug)]
pub(crate) struct ArenaTables {
    pub windows: wgpu::Buffer,
    pub stride: u64,
    pub chunks: wgpu::Buffer,
}

impl ArenaTables {
    /// Creates and fills the tables (call inside an error scope).
    pub fn new(ctx: &GpuContext, seg: &SegmentLayout, label: &str) -> Self {
        let stride = ctx.limits().min_uniform_buffer_offset_alignment.max(32) as u64;
        let windows = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(&format!("{label} windows")),
            size: stride * seg.windows().len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let tensor_base = seg.chunks().len() as u32;
        let n_tensors = seg.members().len() as u32;
        for (i, w) in seg.windows().iter().enumerate() {
            ctx.queue().write_buffer(
                &windows,
                stride * i as u64,
                bytemuck::bytes_of(&w.uniform(tensor_base, n_tensors)),
            );
        }
        // The chunk rows, then the packed chunks' per-vec4 info, in whole 16-byte rows.
        let rows = std::mem::size_of_val(seg.chunks()) as u64;
        let info = (seg.vec_info().len() as u64 * 4).next_multiple_of(16);
        let chunks = crate::gpu_buffers::storage_buffer(
            ctx,
            &format!("{label} chunks"),
            (rows + info).max(16),
        );
        if !seg.chunks().is_empty() {
            ctx.queue()
                .write_buffer(&chunks, 0, bytemuck::cast_slice(seg.chunks()));
        }
        if !seg.vec_info().is_empty() {
            let mut padded = seg.vec_info().to_vec();
            padded.resize(info as usize / 4, 0);
            ctx.queue()
                .write_buffer(&chunks, rows, bytemuck::cast_slice(&padded));
        }
        Self {
            windows,
            stride,
            chunks,
        }
    }

    /// Binding of window `i`'s uniform.
    pub fn window(&self, i: usize) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.windows,
            offset: self.stride * i as u64,
            size: std::num::NonZeroU64::new(std::mem::size_of::<WindowUniform>() as u64),
        })
    }
}

static NEXT_ARENA_ID: AtomicU64 = AtomicU64::new(1);

/// The params and grads buffers of one layout, on the GPU. Keeps the [`GpuContext`] it was
/// built with: every call uses that device and queue.
///
/// Callers may write gradients straight into [`ParamArena::grads_buffer`] with their own
/// kernels, at each tensor's [`TensorInfo::byte_offset`] (half of it in an arena with 16-bit
/// gradients, [`ParamArena::with_precision`], where element `2k` is the low half of word
/// `k`); padding must be left alone (it is never read into a tensor's update, but the layout
/// promises it stays zero).
#[derive(Debug)]
pub struct ParamArena {
    id: u64,
    ctx: GpuContext,
    layout: Arc<ParamLayout>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    precision: Precision,
    path: HalfPath,
    // The 16-bit model copy of a mixed-precision arena (u32 pairs); None for f32.
    model: Option<wgpu::Buffer>,
}

impl ParamArena {
    /// Lays out `specs` and creates zeroed params and grads buffers. Sizes are checked
    /// against the library's and the device's limits before anything is allocated.
    pub fn new(ctx: &GpuContext, specs: &[TensorSpec]) -> Result<Self> {
        Self::with_precision(ctx, specs, Precision::F32, PrecisionOptions::default())
    }

    /// An arena whose model copy and gradients are stored as `precision` says (see
    /// [`crate::precision`]). With a 16-bit model the params buffer holds the f32 master
    /// weights, and the arena adds a 16-bit model buffer ([`ParamArena::model_buffer`]); the
    /// grads buffer holds the gradients in their own type (16-bit or f32). 16-bit buffers pack
    /// two values per `u32` (element `2k` of the arena in the low half) and take half the
    /// bytes of an f32 buffer.
    pub fn with_precision(
        ctx: &GpuContext,
        specs: &[TensorSpec],
        precision: Precision,
        options: PrecisionOptions,
    ) -> Result<Self> {
        ctx.check_alive()?;
        precision.check()?;
        // Native f16 storage needs the device feature, and covers only an all-f16 arena (bf16
        // has no WGSL type); every other mixed arena is packed.
        let path = if !precision.is_mixed() {
            HalfPath::None
        } else if precision == Precision::F16
            && !options.force_packed
            && ctx.features().contains(wgpu::Features::SHADER_F16)
        {
            HalfPath::Native
        } else {
            HalfPath::Packed
        };
        let bytes = ParamLayout::required_bytes(specs)?;
        let limit = ctx.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "arena buffer".into(),
                bytes,
                limit,
            });
        }
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        let layout = ParamLayout::new(
            specs,
            ctx.max_binding_bytes(),
            align * precision_factor(precision),
        )?;
        // 16-bit buffers: half the f32 bytes, kept a multiple of 16.
        let half_bytes = (bytes / 2).next_multiple_of(16);
        let make = |label: &str, size: u64| crate::gpu_buffers::storage_buffer(ctx, label, size);
        let mixed = precision.is_mixed();
        let (params, grads, model) = ctx.scoped(|| {
            (
                make("arena params", bytes),
                make(
                    "arena grads",
                    if precision.grads.is_16() {
                        half_bytes
                    } else {
                        bytes
                    },
                ),
                mixed.then(|| make("arena model", half_bytes)),
            )
        })?;
        Ok(Self {
            id: NEXT_ARENA_ID.fetch_add(1, Ordering::Relaxed),
            ctx: ctx.clone(),
            layout: Arc::new(layout),
            params,
            grads,
            precision,
            path,
            model,
        })
    }

    /// The storage types of the model copy and gradients.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How the kernels read and write the 16-bit buffers: [`HalfPath::Native`] for an
    /// all-f16 arena on a device with `SHADER_F16` (unless forced packed),
    /// [`HalfPath::Packed`] for every other mixed-precision arena, [`HalfPath::None`] for f32.
    /// The buffers' bytes are the same on both paths (little-endian 16-bit values, element
    /// `2k` in the low half of word `k`).
    pub fn half_path(&self) -> HalfPath {
        self.path
    }

    /// The 16-bit model copy (STORAGE | COPY_SRC | COPY_DST), `None` for an f32 arena: the
    /// weights the forward pass reads, element `2k` of the arena in the low half of word `k`.
    pub fn model_buffer(&self) -> Option<&wgpu::Buffer> {
        self.model.as_ref()
    }

    /// Alignment of the binding windows' byte offsets in the f32 buffers: twice the device's
    /// in a mixed-precision arena, so the 16-bit buffers' windows (half the offset) are
    /// aligned too.
    pub fn binding_alignment(&self) -> u64 {
        self.ctx.limits().min_storage_buffer_offset_alignment as u64
            * precision_factor(self.precision)
    }

    /// Unique id (optimizers check they are stepped with the arena they were built for).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The context the arena was built on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub(crate) fn layout_arc(&self) -> Arc<ParamLayout> {
        self.layout.clone()
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.layout.tensor(name)
    }

    /// The params buffer (STORAGE | COPY_SRC | COPY_DST).
    pub fn params_buffer(&self) -> &wgpu::Buffer {
        &self.params
    }

    /// The grads buffer (STORAGE | COPY_SRC | COPY_DST).
    pub fn grads_buffer(&self) -> &wgpu::Buffer {
        &self.grads
    }

    fn write_one(&self, buf: &wgpu::Buffer, name: &str, data: &[f32]) -> Result<()> {
        self.ctx.check_alive()?;
        let t = self.layout.tensor(name)?;
        check_len(t, data)?;
        if !data.is_empty() {
            self.ctx
                .queue()
                .write_buffer(buf, t.byte_offset(), bytemuck::cast_slice(data));
        }
        Ok(())
    }

    fn write_image<T: AsRef<[f32]>>(&self, buf: &wgpu::Buffer, data: &[T]) -> Result<()> {
        self.ctx.check_alive()?;
        let image = self.layout.pack(data)?;
        self.ctx
            .queue()
            .write_buffer(buf, 0, bytemuck::cast_slice(&image));
        Ok(())
    }

    /// Uploads one tensor's parameters (in a mixed-precision arena: its master weights and
    /// their rounding into the model copy).
    pub fn write_params(&self, name: &str, data: &[f32]) -> Result<()> {
        self.write_one(&self.params, name, data)?;
        if let Some(model) = &self.model {
            let t = self.layout.tensor(name)?;
            self.write_half(model, self.precision.model, t, data)?;
        }
        Ok(())
    }

    /// Uploads one tensor's gradient (in a mixed-precision arena, rounded to the gradients'
    /// storage type on the host, to nearest even).
    pub fn write_grads(&self, name: &str, data: &[f32]) -> Result<()> {
        if self.precision.grads.is_16() {
            let t = self.layout.tensor(name)?;
            return self.write_half(&self.grads, self.precision.grads, t, data);
        }
        self.write_one(&self.grads, name, data)
    }

    /// Uploads one tensor's gradient as 16-bit patterns of the arena's gradient type
    /// ([`Error::Unsupported`] in an f32 arena).
    pub fn write_grads_bits(&self, name: &str, bits: &[u16]) -> Result<()> {
        if !self.precision.grads.is_16() {
            return Err(Error::Unsupported(
                "write_grads_bits needs an arena with 16-bit gradients",
            ));
        }
        self.ctx.check_alive()?;
        let t = self.layout.tensor(name)?;
        if bits.len() != t.len {
            return Err(Error::LengthMismatch {
                what: format!("gradient bits of tensor {name:?}"),
                expected: t.len,
                got: bits.len(),
            });
        }
        self.write_bits(&self.grads, t, bits);
        Ok(())
    }

    // Tensors start on 4-element boundaries, so a tensor's 16-bit image starts on a u32 (and
    // 8-byte) boundary; a tensor of odd length shares its last word with padding, written as
    // zero here.
    fn write_bits(&self, buf: &wgpu::Buffer, t: &TensorInfo, bits: &[u16]) {
        if bits.is_empty() {
            return;
        }
        let words = crate::precision::pack_pairs(bits, t.len.div_ceil(4) * 2);
        self.ctx
            .queue()
            .write_buffer(buf, t.offset as u64 * 2, bytemuck::cast_slice(&words));
    }

    fn write_half(
        &self,
        buf: &wgpu::Buffer,
        ty: StorageType,
        t: &TensorInfo,
        data: &[f32],
    ) -> Result<()> {
        self.ctx.check_alive()?;
        check_len(t, data)?;
        let bits = crate::precision::to_bits16(ty, data);
        self.write_bits(buf, t, &bits);
        Ok(())
    }

    /// Uploads every tensor's parameters (one slice per tensor, in arena order) in one write
    /// (in a mixed-precision arena, the model copy too).
    pub fn write_all_params<T: AsRef<[f32]>>(&self, data: &[T]) -> Result<()> {
        self.write_image(&self.params, data)?;
        if let Some(model) = &self.model {
            self.write_half_image(model, self.precision.model, data)?;
        }
        Ok(())
    }

    /// Uploads every tensor's gradient (one slice per tensor, in arena order) in one write.
    pub fn write_all_grads<T: AsRef<[f32]>>(&self, data: &[T]) -> Result<()> {
        if self.precision.grads.is_16() {
            return self.write_half_image(&self.grads, self.precision.grads, data);
        }
        self.write_image(&self.grads, data)
    }

    fn write_half_image<T: AsRef<[f32]>>(
        &self,
        buf: &wgpu::Buffer,
        ty: StorageType,
        data: &[T],
    ) -> Result<()> {
        self.ctx.check_alive()?;
        let image = self.layout.pack(data)?;
        let bits = crate::precision::to_bits16(ty, &image);
        let words = crate::precision::pack_pairs(&bits, (buf.size() / 4) as usize);
        self.ctx
            .queue()
            .write_buffer(buf, 0, bytemuck::cast_slice(&words));
        Ok(())
    }

    /// Reads the whole 16-bit model copy back as `(bits per element of the arena, padding
    /// included)`; `None` for an f32 arena.
    pub fn read_model_image_bits(&self) -> Result<Option<Vec<u16>>> {
        self.read_half_image(self.model.as_ref())
    }

    /// Reads the whole 16-bit grads buffer back (padding included); `None` for f32 grads.
    pub fn read_grads_image_bits(&self) -> Result<Option<Vec<u16>>> {
        match self.precision.grads.is_16() {
            true => self.read_half_image(Some(&self.grads)),
            false => Ok(None),
        }
    }

    fn read_half_image(&self, buf: Option<&wgpu::Buffer>) -> Result<Option<Vec<u16>>> {
        let Some(buf) = buf else { return Ok(None) };
        let n = self.layout.total_elements() as usize;
        // The readback moves bytes; the f32 view of the words is only a container.
        let words: Vec<u32> = readback::read_f32(&self.ctx, buf, 0, n.div_ceil(2))?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        Ok(Some(crate::precision::unpack_pairs(&words, n)))
    }

    /// Reads one tensor's 16-bit model copy back as bit patterns; `None` for an f32 arena.
    pub fn read_model_bits(&self, name: &str) -> Result<Option<Vec<u16>>> {
        let t = self.layout.tensor(name)?.clone();
        Ok(self
            .read_model_image_bits()?
            .map(|img| img[t.offset..t.offset + t.len].to_vec()))
    }

    /// Reads one tensor's model copy back widened to f32: the 16-bit values in a
    /// mixed-precision arena, the parameters in an f32 one.
    pub fn read_model(&self, name: &str) -> Result<Vec<f32>> {
        match self.read_model_bits(name)? {
            Some(bits) => Ok(crate::precision::from_bits16(self.precision.model, &bits)),
            None => self.read_params(name),
        }
    }

    /// Reads one tensor's parameters back.
    pub fn read_params(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.layout.tensor(name)?;
        readback::read_f32(&self.ctx, &self.params, t.offset as u64, t.len)
    }

    /// Reads one tensor's gradient back (widened to f32 from 16-bit storage).
    pub fn read_grads(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.layout.tensor(name)?;
        if let Some(img) = self.read_grads_image_bits()? {
            let bits = &img[t.offset..t.offset + t.len];
            return Ok(crate::precision::from_bits16(self.precision.grads, bits));
        }
        readback::read_f32(&self.ctx, &self.grads, t.offset as u64, t.len)
    }

    /// Reads every tensor's parameters back, in arena order.
    pub fn read_all_params(&self) -> Result<Vec<Vec<f32>>> {
        self.layout.unpack(&self.read_params_image()?)
    }

    /// Reads every tensor's gradient back, in arena order.
    pub fn read_all_grads(&self) -> Result<Vec<Vec<f32>>> {
        self.layout.unpack(&self.read_grads_image()?)
    }

    /// Reads the whole params buffer, padding included.
    pub fn read_params_image(&self) -> Result<Vec<f32>> {
        readback::read_f32(
            &self.ctx,
            &self.params,
            0,
            self.layout.total_elements() as usize,
        )
    }

    /// Reads the whole grads buffer, padding included (widened to f32 from 16-bit storage).
    pub fn read_grads_image(&self) -> Result<Vec<f32>> {
        if let Some(img) = self.read_grads_image_bits()? {
            return Ok(crate::precision::from_bits16(self.precision.grads, &img));
        }
        readback::read_f32(
            &self.ctx,
            &self.grads,
            0,
            self.layout.total_elements() as usize,
        )
    }

    /// Records a clear of the whole grads buffer (padding included) into `encoder`.
    pub fn zero_grads(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.grads, 0, None);
    }
}

// Binding windows of a mixed-precision arena start at twice the device's offset alignment in
// the f32 buffers, so they start aligned in the 16-bit buffers too.
fn precision_factor(p: Precision) -> u64 {
    if p.is_mixed() {
        2
    } else {
        1
    }
}

/// Binds the params / grads window `w` of an arena-shaped buffer.
pub(crate) fn window_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.byte_offset(),
        size: std::num::NonZeroU64::new(w.byte_size()),
    })
}

/// Binds window `w` of a 16-bit arena buffer (the model copy, 16-bit grads): half the f32
/// window's offset and size ([`ParamArena::binding_alignment`] keeps the offset aligned).
pub(crate) fn half_window_binding<'a>(
    buf: &'a wgpu::Buffer,
    w: &Window,
) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.byte_offset() / 2,
        size: std::num::NonZeroU64::new(w.byte_size() / 2),
    })
}

/// Binds the state window of `w` of a segment's state buffer.
pub(crate) fn state_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.state_byte_offset(),
        size: std::num::NonZeroU64::new(w.state_byte_size()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(lens: &[usize]) -> Vec<TensorSpec> {
        lens.iter()
            .enumerate()
            .map(|(i, &l)| TensorSpec::new(format!("t{i}"), l))
            .collect()
    }

    #[test]
    fn the_packing_limit_follows_the_work_split() {
        assert_eq!(pack_max_len(8), 128);
        assert_eq!(pack_max_len(16), 256);
        assert_eq!(pack_max_len(256), PACK_MAX_LEN);
        assert_eq!(pack_max_len(1024), PACK_MAX_LEN);
        // Tensors of 100 and 200 elements: at 8 x 128 only the first is packed (with its
        // neighbour of 100), at 256 x 4 all three share one packed chunk.
        let l = ParamLayout::new(&specs(&[100, 100, 200]), 1 << 30, 256).unwrap();
        let seg = |limit| SegmentLayout::new(&l, vec![0, 1, 2], &[], 1 << 30, 256, limit).unwrap();
        let packed = |s: &SegmentLayout| {
            s.chunks()
                .iter()
                .filter(|c| c.group & CHUNK_PACKED != 0)
                .count()
        };
        let narrow = seg(pack_max_len(8));
        assert_eq!((narrow.chunks().len(), packed(&narrow)), (2, 1));
        let wide = seg(pack_max_len(256));
        assert_eq!((wide.chunks().len(), packed(&wide)), (1, 1));
        let none = seg(0);
        assert_eq!((none.chunks().len(), packed(&none)), (3, 0));
    }

    #[test]
    fn offsets_are_vec4_aligned_and_chunks_cover_each_tensor_once() {
        let lens = [1, 0, 255, 257, 3, 1024, 5];
        let l = ParamLayout::new(&specs(&lens), 1 << 30, 256).unwrap();
        for (i, t) in l.tensors().iter().enumerate() {
            assert_eq!(t.offset % 4, 0);
            assert_eq!(t.len, lens[i]);
            let covered: usize = l
                .chunks()
                .iter()
                .filter(|c| c.tensor == i as u32)
                .map(|c| c.len as usize)
                .sum();
            assert_eq!(covered, t.len, "tensor {i}");
        }
        for w in l.tensors().windows(2) {
            assert!(w[1].offset >= w[0].offset + w[0].len);
        }
        assert!(l
            .chunks()
            .iter()
            .all(|c| c.len >= 1 && u32::from(c.len) <= CHUNK));
        assert_eq!(l.windows().len(), 1);
    }

    #[test]
    fn windows_respect_binding_size_and_alignment() {
        let lens: Vec<usize> = (0..200).map(|i| (i * 37) % 9000).collect();
        let max = 64 * 1024;
        let l = ParamLayout::new(&specs(&lens), max, 256).unwrap();
        assert!(l.windows().len() > 1);
        let mut next_chunk = 0;
        for w in l.windows() {
            assert_eq!(w.chunk_base, next_chunk);
            assert!(w.byte_size() <= max);
            assert_eq!(w.byte_offset() % 256, 0);
            for c in &l.chunks()[w.chunk_base as usize..(w.chunk_base + w.chunk_count) as usize] {
                assert!(c.start as u64 >= w.vec_start);
                assert!(c.start as u64 + (c.len as u64).div_ceil(4) <= w.vec_end);
            }
            next_chunk += w.chunk_count;
        }
        assert_eq!(next_chunk as usize, l.chunks().len());
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert_eq!(
            ParamLayout::new(&[], 1 << 20, 256).unwrap_err(),
            Error::EmptyArena
        );
        let dup = [TensorSpec::new("a", 1), TensorSpec::new("a", 2)];
        assert_eq!(
            ParamLayout::new(&dup, 1 << 20, 256).unwrap_err(),
            Error::DuplicateTensor("a".into())
        );
        assert!(matches!(
            ParamLayout::new(&specs(&[10]), 512, 256),
            Err(Error::BufferTooLarge { .. })
        ));
    }

    #[test]
    fn pack_and_unpack_round_trip_with_zero_padding() {
        let l = ParamLayout::new(&specs(&[3, 0, 5]), 1 << 20, 256).unwrap();
        let data = vec![vec![1.0, 2.0, 3.0], vec![], vec![4.0; 5]];
        let img = l.pack(&data).unwrap();
        assert_eq!(img.len() as u64, l.total_elements());
        assert_eq!(img[3], 0.0);
        assert_eq!(l.unpack(&img).unwrap(), data);
        assert!(matches!(
            l.unpack(&img[..3]),
            Err(Error::LengthMismatch { .. })
        ));
        let bad = vec![vec![1.0], vec![], vec![4.0; 5]];
        assert!(matches!(l.pack(&bad), Err(Error::LengthMismatch { .. })));
    }
}

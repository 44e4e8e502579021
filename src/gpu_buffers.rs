//! Buffer helpers on the lowest GPU floor: every room that allocates (arena, norms, AMP,
//! Lookahead, the engines' segments) imports them from here, so none climbs up to an engine
//! for them.

use crate::context::GpuContext;

/// A storage buffer that can also be copied to and from.
pub(crate) fn storage_buffer(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Bytes of a buffer holding `n` items of `T`, at least 16 (wgpu rejects empty bindings).
pub(crate) fn table_bytes<T>(n: usize) -> u64 {
    ((n * std::mem::size_of::<T>()) as u64).max(16)
}

/// Binds `size` bytes of `buf` from `offset` (the Muon and Adafactor segments' batch windows).
pub(crate) fn range_binding<'a>(
    buf: &'a wgpu::Buffer,
    (offset, size): (u64, u64),
) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset,
        size: std::num::NonZeroU64::new(size),
    })
}

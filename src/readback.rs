//! The only place that maps buffers and waits on the device: copy a range into a staging
//! buffer, map it, and hand back the bytes. Readback is for tests, checkpoints and the host
//! side of a training loop, never the optimizer step.

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// Reads `len` f32s starting at element `offset` of `buffer`, which must belong to `ctx`'s
/// device and have `COPY_SRC` usage. A range past the buffer's end (or one whose end
/// overflows) is [`Error::OutOfBounds`] and a buffer without `COPY_SRC` is
/// [`Error::Unsupported`], both checked before anything is created; wgpu validation errors
/// come back as [`Error::Validation`].
pub fn read_f32(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<f32>> {
    ctx.check_alive()?;
    let available = buffer.size() / 4;
    let out_of_bounds = || Error::OutOfBounds {
        what: buffer_label(buffer),
        offset,
        len: len as u64,
        available,
    };
    let end = offset.checked_add(len as u64).ok_or_else(out_of_bounds)?;
    if end > available {
        return Err(out_of_bounds());
    }
    if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
        return Err(Error::Unsupported(
            "readback copies from the buffer, which needs COPY_SRC usage",
        ));
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let bytes = len as u64 * 4;
    // In error scopes, so a wgpu validation error is an Err, not wgpu's default panic.
    let staging = ctx.scoped(|| {
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(buffer, offset * 4, &staging, 0, bytes);
        ctx.queue().submit([enc.finish()]);
        staging
    })?;
    map_read(ctx, &staging)
}

/// Maps a `MAP_READ` buffer whose copies have been submitted, waits for the device, and
/// returns its contents as `T`s; the buffer is unmapped again, so a preallocated staging
/// buffer can be reused.
pub(crate) fn map_read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
) -> Result<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    rx.recv()
        .map_err(|e| Error::Map(e.to_string()))?
        .map_err(|e| Error::Map(e.to_string()))?;
    let out = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Map(e.to_string()))?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    staging.unmap();
    Ok(out)
}

fn buffer_label(buffer: &wgpu::Buffer) -> String {
    format!("buffer of {} bytes", buffer.size())
}

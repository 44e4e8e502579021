//! Workgroup-grid math. A 1-D grid tops out at 65 535 workgroups per dimension (lavapipe and
//! most desktop drivers), which is only 16.7 M elements at 256 per workgroup, so larger grids
//! spill into y; the kernel linearises the id as `x + y * num_workgroups.x` and skips the tail.

/// `(x, y)` workgroup counts covering `n` workgroups with at most `max_per_dim` in x. With the
/// device limit as `max_per_dim`, y stays within it too for any arena (at most 2³² vec4s, so
/// at most 2²⁶ chunks, far below 65 535²);
/// tests pass a smaller x cap to exercise the spill on small arenas.
/// Returns `(0, 0)` for `n == 0` (nothing to dispatch).
pub fn grid(n: u32, max_per_dim: u32) -> (u32, u32) {
    if n == 0 {
        return (0, 0);
    }
    let max = max_per_dim.max(1);
    // Balance the rows: 65 536 workgroups as 65 535 x 2 would leave half the second row idle,
    // and on CPU adapters an idle workgroup costs nearly as much as a busy one.
    let y = n.div_ceil(max);
    let x = n.div_ceil(y);
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn small_grids_are_one_dimensional() {
        assert_eq!(grid(0, 65535), (0, 0));
        assert_eq!(grid(1, 65535), (1, 1));
        assert_eq!(grid(65535, 65535), (65535, 1));
    }

    #[test]
    fn large_grids_spill_into_y_and_cover_every_workgroup() {
        for &(n, max) in &[
            (65536u32, 65535u32),
            (200_000, 65535),
            (10, 3),
            (9, 3),
            (7, 1),
        ] {
            let (x, y) = grid(n, max);
            assert!(x <= max, "{n} {max}: {x}x{y}");
            if n as u64 <= max as u64 * max as u64 {
                assert!(y <= max, "{n} {max}: {x}x{y}");
            }
            assert!(
                x as u64 * y as u64 >= n as u64,
                "{n} not covered by {x}x{y}"
            );
            // No whole row is wasted, and the grid is balanced: fewer than y idle workgroups.
            assert!((x as u64) * (y as u64 - 1) < n as u64);
            assert!(
                (x as u64) * (y as u64) - (n as u64) < y as u64,
                "{n} {max}: {x}x{y}"
            );
        }
    }
}

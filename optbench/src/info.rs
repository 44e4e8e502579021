//! `optbench info`: the adapter, its limits and features, and the context's caps.

use serde::Serialize;
use wgpu_optim::bench::{self, TimerKind};
use wgpu_optim::GpuContext;

use wgpu_optim::tune::TuneReport;

use crate::tables::{mib, table};
use crate::tune::shape_rows;

#[derive(Serialize, Debug)]
pub(crate) struct Info {
    adapter: String,
    backend: String,
    device_type: String,
    driver: String,
    driver_info: String,
    vendor: u32,
    device: u32,
    max_storage_buffer_binding_size: u64,
    max_buffer_size: u64,
    max_compute_workgroups_per_dimension: u32,
    max_compute_invocations_per_workgroup: u32,
    min_storage_buffer_offset_alignment: u32,
    timestamp_query: bool,
    timestamp_query_inside_encoders: bool,
    timestamp_query_inside_passes: bool,
    timestamp_period_ns: f32,
    /// Bytes one storage binding covers in this context (arenas above are windowed).
    binding_cap_bytes: u64,
    /// Workgroups per dispatch dimension the context uses (larger grids spill into y).
    workgroups_per_dim_cap: u32,
    /// The timer `bench` uses by default on this adapter.
    default_timer: TimerKind,
    /// Kernel shapes: the policy, the cache and what it holds for this adapter.
    shapes: TuneReport,
}

pub(crate) fn info(ctx: &GpuContext) -> Info {
    let a = ctx.adapter_info();
    let l = ctx.limits();
    let f = ctx.features();
    Info {
        adapter: a.name.clone(),
        backend: format!("{:?}", a.backend),
        device_type: format!("{:?}", a.device_type),
        driver: a.driver.clone(),
        driver_info: a.driver_info.clone(),
        vendor: a.vendor,
        device: a.device,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        timestamp_query_inside_encoders: f
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
        timestamp_query_inside_passes: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
        timestamp_period_ns: ctx.queue().get_timestamp_period(),
        binding_cap_bytes: ctx.max_binding_bytes(),
        workgroups_per_dim_cap: ctx.max_workgroups_per_dim(),
        default_timer: if bench::encoder_timestamps_supported(ctx) {
            TimerKind::GpuTimestamps
        } else {
            TimerKind::WallClock
        },
        shapes: ctx.tune_report(),
    }
}

pub(crate) fn print_info(i: &Info) {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows = vec![
        vec!["adapter".into(), i.adapter.clone()],
        vec!["backend".into(), i.backend.clone()],
        vec!["device type".into(), i.device_type.clone()],
        vec![
            "driver".into(),
            format!("{} ({})", i.driver, i.driver_info)
                .trim()
                .to_string(),
        ],
        vec![
            "max_storage_buffer_binding_size".into(),
            mib(i.max_storage_buffer_binding_size),
        ],
        vec!["max_buffer_size".into(), mib(i.max_buffer_size)],
        vec![
            "max_compute_workgroups_per_dimension".into(),
            i.max_compute_workgroups_per_dimension.to_string(),
        ],
        vec![
            "max_compute_invocations_per_workgroup".into(),
            i.max_compute_invocations_per_workgroup.to_string(),
        ],
        vec![
            "min_storage_buffer_offset_alignment".into(),
            i.min_storage_buffer_offset_alignment.to_string(),
        ],
        vec![
            "timestamps (query / in encoders / in passes)".into(),
            format!(
                "{} / {} / {}, period {} ns",
                yes(i.timestamp_query),
                yes(i.timestamp_query_inside_encoders),
                yes(i.timestamp_query_inside_passes),
                i.timestamp_period_ns
            ),
        ],
        vec![
            "binding cap used by the context".into(),
            mib(i.binding_cap_bytes),
        ],
        vec![
            "workgroups per dimension used".into(),
            i.workgroups_per_dim_cap.to_string(),
        ],
        vec!["bench timer".into(), i.default_timer.describe().into()],
    ];
    println!("== adapter");
    print!("{}", table(&["property", "value"], 2, &rows));
    println!();
    let t = &i.shapes;
    println!("== kernel shapes (policy: {:?})", t.tuning);
    match &t.cache_file {
        Some(f) => println!("cache: {}", f.display()),
        None => println!("cache: none"),
    }
    for n in &t.cache_notes {
        println!("  {n}");
    }
    if t.cached.is_empty() {
        println!(
            "nothing cached for this adapter: each elementwise kernel times its candidates when \
             first built (or run `optbench tune`)"
        );
    } else {
        println!("cached for this adapter (timed, ms per step; chosen = fastest):");
        let (headers, rows) = shape_rows(&t.cached);
        let h: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
        print!("{}", table(&h, 3, &rows));
    }
    println!();
}

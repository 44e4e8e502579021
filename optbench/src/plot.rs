//! `--plot`: GB/s against size per optimizer, with the copy kernel as the roofline (PNG or SVG).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::bench::BenchReport;
use crate::tables::fmt_elems;

pub(crate) fn plot(r: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::font::register_font()?;
    const W: u32 = 1000;
    const H: u32 = 640;
    fn draw<DB: DrawingBackend>(
        r: &BenchReport,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e}");
        root.fill(&WHITE).map_err(err)?;
        let xs: Vec<f64> = r.cases.iter().map(|c| c.elements as f64).collect();
        let xmin = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let xmax = xs.iter().cloned().fold(0.0, f64::max);
        let (xmin, xmax) = if xmin < xmax {
            (xmin / 1.5, xmax * 1.5)
        } else {
            (xmin / 2.0, xmax * 2.0)
        };
        let ymax = r
            .cases
            .iter()
            .map(|c| c.gb_per_s)
            .fold(r.roofline_gb_per_s, f64::max)
            * 1.6; // room above the roofline for the legend
                   // One line per optimizer, at the run's smallest tensor count (one tensor by default).
        let t_min = r.cases.iter().map(|c| c.tensors).min().unwrap_or(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "optimizer step throughput ({t_min} tensor{}), {}",
                    if t_min == 1 { "" } else { "s" },
                    r.adapter
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale().base(2.0), 0.0..ymax.max(1e-3))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("elements per step (all tensors)")
            .y_desc("GB/s (bytes moved per step / step time)")
            .x_label_formatter(&|x| fmt_elems(x.round() as u64))
            .x_labels(12)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        let roof = r.roofline_gb_per_s;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(xmin, roof), (xmax, roof)],
                10,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("copy kernel {roof:.2} GB/s (roofline)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        let mut series: Vec<(String, usize)> = Vec::new();
        for c in &r.cases {
            let key = (c.optimizer.clone(), t_min);
            if !series.contains(&key) {
                series.push(key);
            }
        }
        for (i, (name, t)) in series.iter().enumerate() {
            // matplotlib's tab10: distinct on white.
            const TAB10: [(u8, u8, u8); 10] = [
                (31, 119, 180),
                (255, 127, 14),
                (44, 160, 44),
                (214, 39, 40),
                (148, 103, 189),
                (140, 86, 75),
                (227, 119, 194),
                (127, 127, 127),
                (188, 189, 34),
                (23, 190, 207),
            ];
            let (cr, cg, cb) = TAB10[i % TAB10.len()];
            let color = RGBColor(cr, cg, cb).to_rgba();
            let pts: Vec<(f64, f64)> = r
                .cases
                .iter()
                .filter(|c| &c.optimizer == name && c.tensors == *t)
                .map(|c| (c.elements as f64, c.gb_per_s))
                .collect();
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => draw(r, SVGBackend::new(path, (W, H)).into_drawing_area()),
        Some("png") => {
            let mut buf = vec![0u8; (W * H * 3) as usize];
            draw(
                r,
                BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area(),
            )?;
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().context("writing PNG header")?;
            w.write_image_data(&buf).context("writing PNG data")?;
            w.finish().context("finishing PNG")?;
            Ok(())
        }
        _ => bail!(
            "--plot {}: the file name must end in .png or .svg",
            path.display()
        ),
    }
}

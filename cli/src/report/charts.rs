//! The report's charts: line charts over chunk number, drawn as inline SVG by plotters.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// Chart size in pixels; the page scales it to its column.
const SIZE: (u32, u32) = (1000, 260);
/// Series with at most this many points also get a dot per point (a lone point has
/// no line to show).
const DOTS_UP_TO: usize = 60;

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Line colour.
    pub color: RGBColor,
    /// (chunk, value) points, in chunk order.
    pub points: Vec<(u64, f64)>,
}

/// The colours of the patterns' lines, by pattern index, and of single-line charts.
pub const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(90, 90, 90),
];

/// A line chart of `series` over chunk number, with dashed horizontal `marks`
/// (label, value) such as a median. Returns the `<svg>` element.
pub fn line_chart(y_desc: &str, series: &[Series], marks: &[(String, f64)]) -> Result<String> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let first = points().map(|p| p.0).min().unwrap_or(0);
    let last = points().map(|p| p.0).max().unwrap_or(0).max(first + 1);
    let top = points()
        .map(|p| p.1)
        .chain(marks.iter().map(|m| m.1))
        .fold(0.0_f64, f64::max);
    // Headroom, and a visible axis for an all-zero series.
    let top = if top > 0.0 { top * 1.08 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(first..last, 0.0..top)
            .map_err(draw)?;
        // Counts and milliseconds: whole numbers unless the axis is shorter than 10.
        let whole = top >= 10.0;
        chart
            .configure_mesh()
            .x_desc("chunk")
            .y_desc(y_desc)
            .y_label_formatter(&|v| match whole {
                true => format!("{v:.0}"),
                false => format!("{v:.1}"),
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw)?;
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            if s.points.len() <= DOTS_UP_TO {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw)?;
            }
        }
        for (i, (label, value)) in marks.iter().enumerate() {
            let color = PALETTE[(i + 1) % PALETTE.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    [(first, *value), (last, *value)],
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(draw)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        if series.len() + marks.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(draw)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

fn draw(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_its_lines_and_marks() {
        let series = [Series {
            label: "ms".into(),
            color: PALETTE[0],
            points: vec![(0, 3.0), (1, 5.0), (2, 4.0)],
        }];
        let svg = line_chart("ms", &series, &[("median 4 ms".into(), 4.0)]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<polyline"), "no line drawn");
        assert!(svg.contains("median 4 ms"), "no legend for the mark");
    }

    #[test]
    fn one_point_or_all_zero_still_draws() {
        let series = [Series {
            label: "rows".into(),
            color: PALETTE[0],
            points: vec![(7, 0.0)],
        }];
        let svg = line_chart("rows", &series, &[]).unwrap();
        assert!(svg.contains("<svg"));
    }
}

//! The two plots of a run, as SVG (plotters' SVG backend: text is written as SVG
//! `<text>`, so no font files are needed).
//!
//! - `scaling.svg`: lag per handler group and messages in flight (top), replicas per
//!   handler (bottom), against time — the scale-up from 0 and back.
//! - `latency.svg`: time to first token and full-reply p50/p99 per one-second window
//!   (top), messages sent and answered per second (bottom).

use anyhow::anyhow;
use plotters::{coord::types::RangedCoordf64, prelude::*};

use crate::timeline::{names, TimelineRow};

const SIZE: (u32, u32) = (1000, 760);
const TOP_HEIGHT: u32 = 380;
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(120, 120, 120);

/// Points of one series; `None` where nothing was sampled.
type Points = Vec<(f64, Option<f64>)>;

/// Reads one value of a row.
type Field = fn(&TimelineRow) -> Option<f64>;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Consecutive runs of known values: a missing sample breaks the line.
fn segments(points: impl IntoIterator<Item = (f64, Option<f64>)>) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (t, v) in points {
        match v {
            Some(v) => current.push((t, v)),
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A staircase through `points`: a count holds until the next sample.
fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(t, v)) in points.iter().enumerate() {
        if i > 0 {
            out.push((t, points[i - 1].1));
        }
        out.push((t, v));
    }
    out
}

fn draw_line<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    segments: Vec<Vec<(f64, f64)>>,
    style: ShapeStyle,
    label: &str,
    markers: bool,
) -> anyhow::Result<()> {
    let mut labelled = false;
    for segment in segments {
        let dots = markers.then(|| segment.clone());
        let series = chart.draw_series(LineSeries::new(segment, style)).map_err(err)?;
        if !labelled {
            series.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            labelled = true;
        }
        if let Some(dots) = dots {
            chart.draw_series(dots.into_iter().map(|p| Circle::new(p, 2, style.filled()))).map_err(err)?;
        }
    }
    Ok(())
}

fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max)
}

fn span(rows: &[TimelineRow]) -> f64 {
    max_of(rows.iter().map(|r| r.t)).max(1.0)
}

fn chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x_max: f64,
    y_max: f64,
    y_desc: &str,
    integer_y: bool,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    let whole = |v: &f64| format!("{v:.0}");
    let tenths = |v: &f64| format!("{v:.1}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("seconds since start")
        .y_desc(y_desc)
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(if x_max >= 5.0 { &whole } else { &tenths })
        .y_label_formatter(if integer_y || y_max >= 10.0 { &whole } else { &tenths });
    if integer_y {
        mesh.y_labels((y_max as usize + 1).min(12));
    }
    mesh.draw().map_err(err)?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn note(area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, text: &str) -> anyhow::Result<()> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2 - 200, h as i32 / 2),
        ("sans-serif", 16).into_font().color(&GREY),
    ))
    .map_err(err)
}

/// `scaling.svg`: lag and in-flight messages (top), replicas per handler (bottom).
pub fn scaling_svg(rows: &[TimelineRow]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(TOP_HEIGHT);
        let (groups, handlers) = names(rows);
        let x_max = span(rows);

        // Lag from Kafka when sampled, else the lag the autoscaler reported.
        let mut lag_series: Vec<(String, Points)> = groups
            .iter()
            .map(|g| {
                let points = rows
                    .iter()
                    .map(|r| (r.t, r.lag.as_ref().and_then(|l| l.get(g)).map(|v| *v as f64)))
                    .collect();
                (format!("lag {g}"), points)
            })
            .collect();
        if lag_series.is_empty() {
            for h in &handlers {
                let points = rows
                    .iter()
                    .map(|r| {
                        (r.t, r.scaling.as_ref().and_then(|s| s.get(h)).and_then(|s| s.lag).map(|v| v as f64))
                    })
                    .collect();
                lag_series.push((format!("lag {h} (autoscaler)"), points));
            }
        }
        let in_flight: Points = rows.iter().map(|r| (r.t, Some(r.in_flight as f64))).collect();
        let y_max = max_of(
            lag_series
                .iter()
                .flat_map(|(_, p)| p.iter().filter_map(|p| p.1))
                .chain(in_flight.iter().filter_map(|p| p.1)),
        );
        let mut upper = chart(
            &top,
            "Consumer lag (as KEDA computes it) and messages in flight",
            x_max,
            (y_max * 1.1).max(1.0),
            "messages",
            false,
        )?;
        for (i, (label, points)) in lag_series.into_iter().enumerate() {
            draw_line(&mut upper, segments(points), color(i).stroke_width(2), &label, false)?;
        }
        draw_line(
            &mut upper,
            segments(in_flight),
            GREY.stroke_width(1),
            "in flight (accepted, not answered)",
            false,
        )?;
        legend(&mut upper)?;

        let replicas_max =
            max_of(rows.iter().filter_map(|r| r.scaling.as_ref()).flat_map(|s| {
                s.values().flat_map(|s| [Some(s.replicas), s.desired]).flatten().map(f64::from)
            }));
        let mut lower = chart(&bottom, "Handler replicas", x_max, replicas_max + 1.0, "replicas", true)?;
        if handlers.is_empty() {
            note(&bottom, "no replica samples (run with --autoscaler-url)")?;
        }
        for (i, h) in handlers.iter().enumerate() {
            let status = |r: &TimelineRow| r.scaling.as_ref().and_then(|s| s.get(h)).cloned();
            let replicas = segments(rows.iter().map(|r| (r.t, status(r).map(|s| f64::from(s.replicas)))));
            let desired =
                segments(rows.iter().map(|r| (r.t, status(r).and_then(|s| s.desired).map(f64::from))));
            draw_line(
                &mut lower,
                replicas.iter().map(|s| steps(s)).collect(),
                color(i).stroke_width(3),
                &format!("{h} replicas"),
                false,
            )?;
            draw_line(
                &mut lower,
                desired.iter().map(|s| steps(s)).collect(),
                color(i).mix(0.45).stroke_width(1),
                &format!("{h} desired"),
                false,
            )?;
        }
        legend(&mut lower)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One chart of named lines over time, for [`panels_svg`].
pub struct Panel {
    /// The chart's title.
    pub caption: String,
    /// The y axis' unit.
    pub y_desc: String,
    /// `(label, points (seconds, value))` per line.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Two charts of named lines, one above the other (e.g. a soak's memory and file
/// descriptors per process over time).
pub fn panels_svg(top: &Panel, bottom: &Panel) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (upper, lower) = root.split_vertically(TOP_HEIGHT);
        let points = |p: &Panel| p.lines.iter().flat_map(|(_, pts)| pts.clone()).collect::<Vec<_>>();
        let x_max = max_of([top, bottom].into_iter().flat_map(points).map(|(t, _)| t)).max(1.0);
        for (area, panel) in [(&upper, top), (&lower, bottom)] {
            let y_max = max_of(points(panel).into_iter().map(|(_, v)| v));
            let mut c = chart(area, &panel.caption, x_max, (y_max * 1.1).max(1.0), &panel.y_desc, false)?;
            for (i, (label, pts)) in panel.lines.iter().enumerate() {
                let line = pts.iter().map(|&(t, v)| (t, Some(v)));
                draw_line(&mut c, segments(line), color(i).stroke_width(2), label, true)?;
            }
            legend(&mut c)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// `latency.svg`: TTFT and full-reply p50/p99 per second (top), send and answer rates (bottom).
pub fn latency_svg(rows: &[TimelineRow]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(TOP_HEIGHT);
        let x_max = span(rows);

        let series: [(&str, Field); 4] = [
            ("time to first token p50", |r| r.ttft.p50_ms),
            ("time to first token p99", |r| r.ttft.p99_ms),
            ("full reply p50", |r| r.reply.p50_ms),
            ("full reply p99", |r| r.reply.p99_ms),
        ];
        let y_max = max_of(series.iter().flat_map(|(_, f)| rows.iter().filter_map(f)));
        let mut upper = chart(
            &top,
            "Latency per one-second window",
            x_max,
            (y_max * 1.1).max(1.0),
            "milliseconds",
            false,
        )?;
        if y_max == 0.0 {
            note(&top, "no replies")?;
        }
        for (i, (label, f)) in series.iter().enumerate() {
            let style =
                if i % 2 == 0 { color(i / 2).stroke_width(2) } else { color(i / 2).mix(0.5).stroke_width(2) };
            draw_line(&mut upper, segments(rows.iter().map(|r| (r.t, f(r)))), style, label, true)?;
        }
        legend(&mut upper)?;

        // Per-second rates from consecutive rows.
        let rate = |f: fn(&TimelineRow) -> u64| -> Points {
            rows.windows(2)
                .map(|w| {
                    let dt = w[1].t - w[0].t;
                    let v = (dt > 0.0).then(|| f(&w[1]).saturating_sub(f(&w[0])) as f64 / dt);
                    (w[1].t, v)
                })
                .collect()
        };
        let sent = rate(|r| r.counts.sent);
        let answered = rate(|r| r.counts.answered);
        let y_max = max_of(sent.iter().chain(&answered).filter_map(|p| p.1));
        let mut lower =
            chart(&bottom, "Messages per second", x_max, (y_max * 1.1).max(1.0), "messages/s", false)?;
        draw_line(&mut lower, segments(sent), color(0).stroke_width(2), "sent", false)?;
        draw_line(&mut lower, segments(answered), color(2).stroke_width(2), "answered (done)", false)?;
        legend(&mut lower)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::{report::Percentiles, sample::ScaledObjectStatus, tracker::Snapshot};

    fn rows() -> Vec<TimelineRow> {
        (0..20)
            .map(|t| {
                let counts =
                    Snapshot { sent: t * 3, accepted: t * 3, answered: t * 2, ..Snapshot::default() };
                let lag = (t != 7).then(|| {
                    BTreeMap::from([("responder".into(), (t * 2) as i64), ("memory".into(), t as i64)])
                });
                let replicas = [0, 1, 2, 3, 2, 1, 0][(t as usize) / 3];
                let scaling = Some(BTreeMap::from([(
                    "responder".into(),
                    ScaledObjectStatus {
                        name: "responder".into(),
                        replicas,
                        desired: Some(replicas),
                        lag: None,
                        active: None,
                    },
                )]));
                let mut row = TimelineRow::new(Duration::from_secs(t), counts, lag, scaling);
                row.ttft = Percentiles::of([Duration::from_millis(100 + t * 10)]);
                row.reply = Percentiles::of([Duration::from_millis(900 + t * 20)]);
                row
            })
            .collect()
    }

    #[test]
    fn both_plots_render_with_labels_and_no_font_files() {
        for svg in [scaling_svg(&rows()).expect("scaling"), latency_svg(&rows()).expect("latency")] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
            assert!(svg.contains("<polyline") || svg.contains("<path"), "lines drawn");
            assert!(svg.contains("seconds since start"), "axis labels written as text");
        }
        let scaling = scaling_svg(&rows()).unwrap();
        assert!(scaling.contains("lag responder") && scaling.contains("responder replicas"));
        assert!(latency_svg(&rows()).unwrap().contains("time to first token p99"));
    }

    #[test]
    fn empty_runs_still_plot() {
        let svg = scaling_svg(&[]).expect("scaling of nothing");
        assert!(svg.contains("--autoscaler-url"));
        latency_svg(&[]).expect("latency of nothing");
    }

    #[test]
    fn gaps_break_lines_and_counts_hold_as_steps() {
        let segs = segments([(0.0, Some(1.0)), (1.0, None), (2.0, Some(2.0)), (3.0, Some(3.0))]);
        assert_eq!(segs, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        assert_eq!(
            steps(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)]),
            [(0.0, 0.0), (1.0, 0.0), (1.0, 2.0), (2.0, 2.0), (2.0, 1.0)]
        );
    }
}

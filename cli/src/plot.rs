//! Plots people would rather look at than read: FROC curves (`a3d eval --plot`), drawn with
//! plotters into a PNG (written beside its name, then renamed).

use a3d_detector::froc::Froc;
use plotters::prelude::*;
use std::path::Path;

/// Where a sans-serif TrueType font is looked for (`A3D_FONT` first).
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font for plotters' text once.
fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<String> = std::env::var("A3D_FONT")
            .into_iter()
            .chain(FONT_PATHS.iter().map(|s| s.to_string()))
            .collect();
        let bytes = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "plots need a TrueType font: none at {} (set A3D_FONT to a .ttf)",
                    candidates.join(", ")
                )
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font could not be read".to_string())
    })
    .clone()
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Turns a drawing error into text.
type ErrorText<'a> = &'a dyn Fn(&dyn std::fmt::Display) -> String;

/// A 720 x 520 PNG on white at `path`, drawn by `draw` (given the area and the error text).
fn render(
    path: &Path,
    draw: impl FnOnce(&Area, ErrorText) -> Result<(), String>,
) -> Result<(), String> {
    register_font()?;
    // replace_with names the file in every error.
    let err = |e: &dyn std::fmt::Display| e.to_string();
    crate::files::replace_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, (720, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        draw(&root, &err)?;
        root.present().map_err(|e| err(&e))
    })
}

/// FROC curves (sensitivity against FP per image, log axis 1/8 to 32) with the reported FP
/// rates marked.
pub fn froc_png(path: &Path, title: &str, curves: &[(&str, &Froc)]) -> Result<(), String> {
    render(path, |root, err| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .build_cartesian_2d((0.125f64..32f64).log_scale(), 0f64..1f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("false positives per image")
            .y_desc("sensitivity")
            .draw()
            .map_err(|e| err(&e))?;
        let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
        for (i, (name, froc)) in curves.iter().enumerate() {
            let colour = colours[i % colours.len()];
            // Past the curve's end the sensitivity stays at its last value.
            // From the axis' left end (the sensitivity reached by then) to its right end.
            let start = froc
                .curve
                .iter()
                .take_while(|p| p.0 <= 0.125)
                .last()
                .map_or(0.0, |p| p.1);
            let mut points = vec![(0.125, start)];
            points.extend(froc.curve.iter().filter(|p| p.0 > 0.125).copied());
            let last = froc.curve.last().map_or(0.0, |p| p.1);
            points.push((32.0, last));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(format!(
                    "{name} (mean 0.5-4: {:.3})",
                    froc.mean_first_four()
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            chart
                .draw_series(
                    a3d_detector::froc::FP_RATES
                        .iter()
                        .zip(froc.sensitivity)
                        .map(|(&x, y)| Circle::new((x, y), 3, colour.filled())),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        Ok(())
    })
}

/// The training loss per iteration (a moving mean over 20 iterations, and the raw values faint)
/// and the validation FROC mean per epoch on a second axis.
pub fn training_png(
    path: &Path,
    losses: &[(f64, f64)],
    validation: &[(f64, f64)],
) -> Result<(), String> {
    render(path, |root, err| {
        let x_max = losses.iter().map(|p| p.0).fold(1.0, f64::max);
        let y_max = losses
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption("training", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .right_y_label_area_size(54)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..x_max, 0f64..1f64);
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("loss")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("validation FROC mean 0.5-4")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(
                losses.iter().copied(),
                RGBColor(180, 180, 230),
            ))
            .map_err(|e| err(&e))?;
        let smooth: Vec<(f64, f64)> = (0..losses.len())
            .map(|i| {
                let lo = i.saturating_sub(19);
                let w = &losses[lo..=i];
                (
                    losses[i].0,
                    w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("loss (mean of 20)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_secondary_series(LineSeries::new(
                validation.iter().copied(),
                RED.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("validation FROC")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        Ok(())
    })
}

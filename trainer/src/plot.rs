//! PNG line charts for the things people would rather look at than read: progress curves, success
//! against training step per arm (with error bars over seeds), grids of per-episode curves.
//!
//! Text is drawn with the DejaVu Sans font from Debian's `fonts-dejavu-core` (installed by
//! `scripts/setup.sh`), through plotters' pure-Rust `ab_glyph` path, so no fontconfig/freetype build is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

/// Errors producing a chart; they name the output file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "cannot load the plot font {path}: {reason} (run scripts/setup.sh, or set TOPRL_FONT to a .ttf file)"
    )]
    Font { path: PathBuf, reason: String },
    #[error("cannot draw {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("refusing to write the plot to {path}: {reason}")]
    UnsafeOutput { path: PathBuf, reason: String },
}

/// Check a user-given plot path before any work: it must end in `.png`, must not be one of `protected`
/// (files this command reads or has just written), must not lie inside any of `protected_dirs` (a
/// dataset's own folders), and must not replace an existing file that is not a PNG. So `--plot
/// meta/info.json` or `--plot` onto the progress parquet is refused instead of destroying the file.
pub fn check_plot_path(path: &Path, protected: &[&Path], protected_dirs: &[&Path]) -> Result<(), PlotError> {
    let refuse = |reason: String| PlotError::UnsafeOutput {
        path: path.to_path_buf(),
        reason,
    };
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(refuse("a plot file name must end in .png".into()));
    }
    let resolved = resolve(path);
    for p in protected {
        if resolve(p) == resolved {
            return Err(refuse(format!(
                "it is {}, which this command reads or writes",
                p.display()
            )));
        }
    }
    for d in protected_dirs {
        if resolved.starts_with(resolve(d)) {
            return Err(refuse(format!(
                "it is inside {}, which this command reads",
                d.display()
            )));
        }
    }
    if path.is_dir() {
        return Err(refuse("it is a folder".into()));
    }
    if path.exists() {
        const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        let mut head = [0u8; 8];
        let is_png_file = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head.as_slice() == PNG_SIGNATURE);
        if !is_png_file {
            return Err(refuse("the existing file there is not a PNG image".into()));
        }
    }
    Ok(())
}

/// `path` made absolute, with its existing parent resolved through links, for comparisons.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(full) = std::fs::canonicalize(path) {
        return full;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute.clone()),
        _ => absolute,
    }
}

/// One line on a chart, optionally with a symmetric error bar at each point.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Half-width of the error bar at each point (e.g. standard deviation over seeds).
    pub errors: Option<Vec<f64>>,
}

/// A chart: title, axis labels, lines.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range; default: fitted to the data.
    pub y_range: Option<(f64, f64)>,
}

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn ensure_font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), (PathBuf, String)>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var_os("TOPRL_FONT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FONT));
        let bytes = std::fs::read(&path).map_err(|e| (path.clone(), e.to_string()))?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| (path, "not a TrueType font".to_string()))
    })
    .clone()
    .map_err(|(path, reason)| PlotError::Font { path, reason })
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn draw_error(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |reason| PlotError::Draw {
        path: path.to_owned(),
        reason,
    }
}

fn data_ranges(chart: &Chart) -> ((f64, f64), (f64, f64)) {
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &chart.series {
        for (i, &(px, py)) in s.points.iter().enumerate() {
            let e = s.errors.as_ref().and_then(|e| e.get(i)).copied().unwrap_or(0.0);
            x = (x.0.min(px), x.1.max(px));
            y = (y.0.min(py - e), y.1.max(py + e));
        }
    }
    if !x.0.is_finite() {
        x = (0.0, 1.0);
        y = (0.0, 1.0);
    }
    if x.1 <= x.0 {
        x = (x.0 - 0.5, x.0 + 0.5);
    }
    let y = chart.y_range.unwrap_or(y);
    let y = if y.1 <= y.0 { (y.0 - 0.5, y.0 + 0.5) } else { y };
    let pad = (y.1 - y.0) * 0.05;
    (
        x,
        if chart.y_range.is_some() {
            y
        } else {
            (y.0 - pad, y.1 + pad)
        },
    )
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let ((x0, x1), (y0, y1)) = data_ranges(chart);
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        ctx.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
        if let Some(errors) = &s.errors {
            ctx.draw_series(
                s.points.iter().zip(errors).map(|(&(x, y), &e)| {
                    ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(1), 6)
                }),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    if chart.series.iter().any(|s| !s.name.is_empty()) {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One bar of a bar chart: a label, a value and a symmetric error (e.g. mean and std over seeds).
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub error: f64,
}

/// A bar chart with error bars and each value printed above its bar, as a PNG written atomically.
pub fn save_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[Bar],
    y_range: (f64, f64),
) -> Result<(), PlotError> {
    ensure_font()?;
    let size = (160 * bars.len().max(3) as u32, 480);
    let image = render(size, |root| {
        let n = bars.len();
        let mut ctx = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, y_range.0..y_range.1)
            .map_err(|e| e.to_string())?;
        ctx.configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    bars.get(i as usize).map(|b| b.label.clone()).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, bar) in bars.iter().enumerate() {
            let x = i as f64;
            let color = PALETTE[i % PALETTE.len()];
            ctx.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, y_range.0), (x + 0.35, bar.value)],
                color.mix(0.8).filled(),
            )))
            .map_err(|e| e.to_string())?;
            ctx.draw_series(std::iter::once(ErrorBar::new_vertical(
                x,
                bar.value - bar.error,
                bar.value,
                bar.value + bar.error,
                BLACK.stroke_width(2),
                12,
            )))
            .map_err(|e| e.to_string())?;
            let text_y = (bar.value + bar.error + 0.03 * (y_range.1 - y_range.0)).min(y_range.1);
            ctx.draw_series(std::iter::once(Text::new(
                format!("{:.3} ± {:.3}", bar.value, bar.error),
                (x - 0.3, text_y),
                ("sans-serif", 13),
            )))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .map_err(draw_error(path))?;
    write_png(path, &image)
}

/// Render charts in a grid (`columns` wide) to an RGB image of `cell` pixels per chart.
pub fn render_grid(charts: &[Chart], columns: usize, cell: (u32, u32)) -> Result<image::RgbImage, String> {
    ensure_font().map_err(|e| e.to_string())?;
    let columns = columns.max(1);
    let rows = charts.len().div_ceil(columns).max(1);
    render((cell.0 * columns as u32, cell.1 * rows as u32), |root| {
        let areas = root.split_evenly((rows, columns));
        for (chart, area) in charts.iter().zip(areas.iter()) {
            draw_chart(area, chart)?;
        }
        Ok(())
    })
}

/// Draw on a white `size` canvas and return it as an image.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<image::RgbImage, String> {
    let (w, h) = size;
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    image::RgbImage::from_raw(w, h, buffer).ok_or_else(|| "plot buffer has the wrong size".to_string())
}

/// Write one chart (or a grid of charts) to a PNG file, atomically.
pub fn save_grid(path: &Path, charts: &[Chart], columns: usize, cell: (u32, u32)) -> Result<(), PlotError> {
    ensure_font()?;
    let image = render_grid(charts, columns, cell).map_err(draw_error(path))?;
    write_png(path, &image)
}

/// Encode `image` as PNG and write it to `path` atomically.
fn write_png(path: &Path, image: &image::RgbImage) -> Result<(), PlotError> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| draw_error(path)(e.to_string()))?;
    crate::atomic::write_atomic(path, &png).map_err(|source| PlotError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Write a single chart to a PNG file (800x480), atomically.
pub fn save_chart(path: &Path, chart: &Chart) -> Result<(), PlotError> {
    save_grid(path, std::slice::from_ref(chart), 1, (800, 480))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_paths_never_replace_inputs_or_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("meta")).unwrap();
        std::fs::write(root.join("meta/info.json"), "{}").unwrap();
        std::fs::write(root.join("progress.parquet"), "PAR1").unwrap();
        std::fs::write(root.join("notes.png"), "not an image").unwrap();
        let parquet = root.join("progress.parquet");
        let meta = root.join("meta");
        let check = |p: &Path| check_plot_path(p, &[parquet.as_path()], &[meta.as_path()]);
        for bad in [
            root.join("meta/info.json"),
            root.join("meta/curves.png"),
            root.join("progress.parquet"),
            root.join("notes.png"),
            root.join("meta"),
        ] {
            let err = check(&bad).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{err}");
        }
        // A protected file named through another spelling is still recognised.
        let spelled = root.join("meta/../written.png");
        assert!(check_plot_path(&root.join("written.png"), &[spelled.as_path()], &[]).is_err());
        assert!(check(&root.join("curves.png")).is_ok());
        image::RgbImage::new(2, 2).save(root.join("curves.png")).unwrap();
        // Rewriting a PNG (a rerun's own plot) is fine.
        assert!(check(&root.join("curves.png")).is_ok());
    }

    #[test]
    fn chart_draws_lines_in_their_colours() {
        let chart = Chart {
            title: "progress".into(),
            x_label: "prefix".into(),
            y_label: "p".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(0.0, 0.0), (1.0, 1.0)],
                    errors: None,
                },
                Series {
                    name: "b".into(),
                    points: vec![(0.0, 1.0), (1.0, 0.0)],
                    errors: Some(vec![0.1, 0.1]),
                },
            ],
            y_range: Some((0.0, 1.0)),
        };
        let img = render_grid(&[chart.clone(), chart], 2, (200, 150)).unwrap();
        assert_eq!(img.dimensions(), (400, 150));
        let count = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(
            count(PALETTE[0]) > 50 && count(PALETTE[1]) > 50,
            "both series are drawn"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/chart.png");
        save_chart(&path, &Chart::default()).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), 800);
    }

    #[test]
    fn bar_heights_follow_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let bar = |label: &str, value| Bar {
            label: label.into(),
            value,
            error: 0.05,
        };
        save_bars(
            &path,
            "t",
            "success",
            &[bar("low", 0.2), bar("", 0.0), bar("high", 0.8)],
            (0.0, 1.0),
        )
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // Pixels of each bar's fill (its palette colour blended over white) in its third of the image.
        let fill = |i: usize| {
            let c = PALETTE[i];
            let blend = |v: u8| (f64::from(v) * 0.8 + 255.0 * 0.2).round() as i32;
            let want = [blend(c.0), blend(c.1), blend(c.2)];
            img.enumerate_pixels()
                .filter(|(x, _, p)| {
                    (*x as usize * 3 / img.width() as usize) == i
                        && p.0.iter().zip(want).all(|(&a, b)| (i32::from(a) - b).abs() <= 2)
                })
                .count()
        };
        let (low, empty, high) = (fill(0), fill(1), fill(2));
        assert!(low > 1000 && empty < 50, "{low} {empty}");
        assert!(
            high > 3 * low,
            "a bar four times as tall has far more fill: {low} vs {high}"
        );
    }
}

//! `simsiam report RUN_DIR`: plots of a run's metrics as PNG and SVG, and one self-contained
//! HTML page (config, final figures, plots inlined as SVG). Training writes it at the end.
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One plotted line: a name and its (x, y) points.
pub(crate) type Series = (String, Vec<(f64, f64)>);

/// A figure: file stem, title, x-axis label, lines, and whether the y axis is logarithmic.
pub(crate) struct Figure {
    pub stem: &'static str,
    pub title: &'static str,
    pub x_label: &'static str,
    pub series: Vec<Series>,
    /// A logarithmic y axis (for values over orders of magnitude; points <= 0 are left out).
    pub log_y: bool,
}

impl Figure {
    /// A figure on a linear y axis.
    pub fn new(stem: &'static str, title: &'static str, x_label: &'static str, series: Vec<Series>) -> Self {
        Self { stem, title, x_label, series, log_y: false }
    }

    /// The same figure on a logarithmic y axis.
    pub fn log_y(self) -> Self {
        Self { log_y: true, ..self }
    }
}

const COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(0, 0, 0),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|(_, p)| p.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |a: f64, b: f64| {
        if b - a < 1e-12 {
            (a - 0.5 - a.abs() * 0.05, b + 0.5 + b.abs() * 0.05)
        } else {
            (a - (b - a) * 0.04, b + (b - a) * 0.04)
        }
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    (x0, x1, y0, y1)
}

/// The plots' one font, DejaVu Sans (`assets/`, its licence beside it), built into the binary:
/// text is rendered in Rust (`ab_glyph`), so plotting needs neither FreeType nor fontconfig nor
/// any installed font (GPU machines often have none).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("assets/DejaVuSans.ttf is a valid font (built in)"));
    });
}

/// Where the legend hides the fewest points: the corner (upper right first, on ties) whose
/// third of the width and quarter of the height holds the fewest of the plotted points.
fn legend_corner(series: &[Series], (x0, x1, y0, y1): (f64, f64, f64, f64)) -> SeriesLabelPosition {
    use SeriesLabelPosition::*;
    let points = || series.iter().flat_map(|(_, p)| p.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (fx, fy) = (|x: f64| (x - x0) / (x1 - x0), |y: f64| (y - y0) / (y1 - y0));
    [(UpperRight, true, true), (UpperLeft, false, true), (LowerRight, true, false), (LowerLeft, false, false)]
        .into_iter()
        .min_by_key(|&(_, right, upper)| {
            points()
                .filter(|&&(x, y)| {
                    let (u, v) = (fx(x), fy(y));
                    (if right { u > 2.0 / 3.0 } else { u < 1.0 / 3.0 }) && (if upper { v > 0.75 } else { v < 0.25 })
                })
                .count()
        })
        .map(|(corner, ..)| corner)
        .expect("four corners")
}

/// The decimals a tick needs when some ten ticks span `range`: 0.02 -> 3, 1 -> 1, 16 -> 0.
fn tick_decimals(range: f64) -> usize {
    if range.is_finite() && range > 0.0 {
        (-(range / 10.0).log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        1
    }
}

/// `v` with `decimals` decimals, and zero without a sign ("0.0", not "-0.0").
fn fixed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    match s.strip_prefix('-') {
        Some(abs) if abs.chars().all(|c| c == '0' || c == '.') => abs.to_string(),
        _ => s,
    }
}

/// An x tick as a reader writes it: steps, epochs and dimensions are counts ("50", not
/// "50.0"); other values with at most three decimals, trailing zeros dropped.
fn x_tick(v: &f64) -> String {
    if (v - v.round()).abs() <= 1e-9 * v.abs().max(1.0) {
        format!("{:.0}", v.round() + 0.0) // + 0.0: no "-0"
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> std::result::Result<(), String> {
    register_font();
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    // A log axis is log10(y) on a linear one, its ticks labelled as powers of ten; log10 of a
    // value <= 0 is not finite, so such points are left out as missing ones are.
    let shown: std::borrow::Cow<[Series]> = if fig.log_y {
        fig.series.iter().map(|(n, p)| (n.clone(), p.iter().map(|&(x, y)| (x, y.log10())).collect())).collect()
    } else {
        (&fig.series[..]).into()
    };
    let (x0, x1, y0, y1) = bounds(&shown);
    let mut chart = ChartBuilder::on(&root)
        .caption(fig.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let power_of_ten = |v: &f64| format!("{:.1e}", 10f64.powf(*v));
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(fig.x_label).x_label_formatter(&x_tick).light_line_style(RGBColor(235, 235, 235));
    let decimals = tick_decimals(y1 - y0);
    let plain = |v: &f64| fixed(*v, decimals);
    if fig.log_y {
        mesh.y_label_formatter(&power_of_ten);
    } else {
        mesh.y_label_formatter(&plain);
    }
    mesh.draw().map_err(e)?;
    // Lines of one name (an experiment arm's seeds) are one group: one colour, one legend entry,
    // which a group without any point (an arm that does not log this value) does not get. The
    // colour stays the group's place among all runs, the same in every figure.
    let mut groups: Vec<(&str, bool)> = Vec::new();
    for (name, pts) in shown.iter() {
        let i = groups.iter().position(|(g, _)| *g == name).unwrap_or_else(|| {
            groups.push((name, false));
            groups.len() - 1
        });
        let first = !groups[i].1 && !pts.is_empty();
        groups[i].1 |= first;
        // Past the palette (an experiment with ten arms or more), the colours come round again
        // as dashes: long ones, then short ones.
        let c = COLOURS[i % COLOURS.len()];
        let dash = [None, Some((8, 5)), Some((3, 3))][(i / COLOURS.len()).min(2)];
        let finite = pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
        let drawn = match dash {
            _ if pts.len() == 1 => chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(e)?,
            None => chart.draw_series(LineSeries::new(finite, c.stroke_width(2))).map_err(e)?,
            Some((len, gap)) => {
                chart.draw_series(DashedLineSeries::new(finite, len, gap, c.stroke_width(2))).map_err(e)?
            }
        };
        if first {
            let drawn = drawn.label(name.as_str());
            match dash {
                None => drawn.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))),
                Some((len, gap)) => drawn.legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 18, y)], len, gap, c.stroke_width(2))
                }),
            };
        }
    }
    if groups.len() > 1 && groups.iter().any(|(_, labelled)| *labelled) {
        chart
            .configure_series_labels()
            .position(legend_corner(&shown, (x0, x1, y0, y1)))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// The plots' size in pixels.
const PLOT_SIZE: (u32, u32) = (800, 480);

/// Renders a figure to `<dir>/<stem>.png` and `.svg`; returns the SVG text.
pub(crate) fn render(dir: &Path, fig: &Figure) -> Result<String> {
    let png = dir.join(format!("{}.png", fig.stem));
    let rgb = rasterise(fig).map_err(|m| Error::data(&png, format!("cannot draw plot: {m}")))?;
    write_indexed_png(&png, &rgb, PLOT_SIZE.0, PLOT_SIZE.1)?;
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area(), fig)
        .map_err(|m| Error::data(&png, format!("cannot draw plot: {m}")))?;
    let path = dir.join(format!("{}.svg", fig.stem));
    std::fs::write(&path, &svg).map_err(|e| Error::io(&path, e))?;
    Ok(svg)
}

/// A figure drawn into an RGB buffer of [`PLOT_SIZE`] (`[h, w, 3]`).
fn rasterise(fig: &Figure) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = PLOT_SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut rgb, PLOT_SIZE).into_drawing_area(), fig)?;
    Ok(rgb)
}

/// Writes an RGB image `[h, w, 3]` as an 8-bit indexed PNG at the best deflate. A plot is a
/// few line colours and their anti-aliased blends: with a palette of 256 colours (exact when the
/// image has no more, else NeuQuant's) it looks the same and takes about a sixth of the bytes
/// of plotters' RGB PNG, which matters for results committed by the hundred.
fn write_indexed_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let (palette, indices) = palette_indices(rgb);
    let fail = |m: String| Error::data(path, format!("cannot write PNG: {m}"));
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(palette);
    enc.set_compression(png::Compression::High);
    // Long runs of one index (the white page, flat lines) compress best unfiltered.
    enc.set_filter(png::Filter::NoFilter);
    let mut writer = enc.write_header().map_err(|e| fail(e.to_string()))?;
    writer.write_image_data(&indices).map_err(|e| fail(e.to_string()))?;
    writer.finish().map_err(|e| fail(e.to_string()))
}

/// An RGB image's palette (`3 x n` bytes, n <= 256) and each pixel's index into it: every colour
/// exactly when there are at most 256, else NeuQuant's 256 (sampling every 10th pixel).
fn palette_indices(rgb: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut index: std::collections::HashMap<[u8; 3], u8> = std::collections::HashMap::new();
    let mut palette = Vec::new();
    let mut indices = Vec::with_capacity(rgb.len() / 3);
    for px in rgb.chunks_exact(3) {
        let key = [px[0], px[1], px[2]];
        let i = match index.get(&key) {
            Some(&i) => i,
            None if index.len() < 256 => {
                let i = index.len() as u8;
                index.insert(key, i);
                palette.extend_from_slice(&key);
                i
            }
            None => {
                let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
                let nq = color_quant::NeuQuant::new(10, 256, &rgba);
                let indices = rgba.chunks_exact(4).map(|p| nq.index_of(p) as u8).collect();
                return (nq.color_map_rgb(), indices);
            }
        };
        indices.push(i);
    }
    (palette, indices)
}

/// Mean and sample standard deviation of the values present; `None` if there are none.
pub(crate) fn mean_sd(xs: &[Option<f64>]) -> Option<(f64, f64, usize)> {
    let xs: Vec<f64> = xs.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    Some((mean, var.sqrt(), n))
}

/// A [`mean_sd`] as a table cell: `mean ± sd (n)`, or `mean (1)`.
pub(crate) fn mean_sd_cell(m: Option<(f64, f64, usize)>, digits: usize) -> String {
    match m {
        Some((mean, _, 1)) => format!("{mean:.digits$} (1)"),
        Some((mean, sd, n)) => format!("{mean:.digits$} ± {sd:.digits$} ({n})"),
        None => "–".into(),
    }
}

/// The difference of two [`mean_sd`]s, `a - b`, as a table cell: with its standard error and
/// Welch's two-sided p in brackets where both have repeats; `–` where either is missing.
pub(crate) fn difference_cell(a: Option<(f64, f64, usize)>, b: Option<(f64, f64, usize)>) -> String {
    match difference(a, b) {
        Some((d, Some((se, df)))) => {
            let p = t_test_p(d, se, df).map_or(String::new(), |p| format!(", p {}", p_text(p)));
            format!("{d:+.2} (se {se:.2}{p})")
        }
        Some((d, None)) => format!("{d:+.2}"),
        None => "–".into(),
    }
}

/// `a - b` of two [`mean_sd`]s and, where both have repeats, its standard error
/// sqrt(s_a²/n_a + s_b²/n_b) with Welch's degrees of freedom (the pooled n_a + n_b - 2 where
/// neither side has any spread, which leaves Welch's formula 0/0).
pub(crate) fn difference(
    a: Option<(f64, f64, usize)>,
    b: Option<(f64, f64, usize)>,
) -> Option<(f64, Option<(f64, f64)>)> {
    let ((m1, s1, n1), (m2, s2, n2)) = (a?, b?);
    let test = (n1 > 1 && n2 > 1).then(|| {
        let (v1, v2) = (s1 * s1 / n1 as f64, s2 * s2 / n2 as f64);
        let welch = (v1 + v2).powi(2) / (v1 * v1 / (n1 - 1) as f64 + v2 * v2 / (n2 - 1) as f64);
        ((v1 + v2).sqrt(), if welch.is_finite() { welch } else { (n1 + n2 - 2) as f64 })
    });
    Some((m1 - m2, test))
}

/// The two-sided p-value of a difference `diff` with standard error `se` under Student's t on
/// `df` degrees of freedom; with no spread at all, 1 for no difference and 0 for any other.
pub(crate) fn t_test_p(diff: f64, se: f64, df: f64) -> Option<f64> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if se == 0.0 {
        return Some(if diff == 0.0 { 1.0 } else { 0.0 });
    }
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(2.0 * t.sf((diff / se).abs()))
}

/// A p-value: two decimals, three below 0.01, `< 0.001` below that.
pub(crate) fn p_text(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        let digits = if p < 0.01 { 3 } else { 2 };
        format!("{p:.digits$}")
    }
}

/// The JSON lines of a metrics file. A last line without its newline that does not parse is
/// one a running process is still writing: left out, so a run can be read while it trains.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => rows.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => return Err(Error::data(path, format!("line {}: not JSON: {e}", i + 1))),
        }
    }
    Ok(rows)
}

pub(crate) fn series(rows: &[&Value], x: &str, y: &[&str], name: &str) -> Series {
    let get = |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64);
    let pts = rows.iter().filter_map(|r| Some((get(r, &[x])?, get(r, y)?))).collect();
    (name.to_string(), pts)
}

/// Several runs' metrics lines (`metrics.jsonl`), each under its label.
pub(crate) type Runs = [(String, Vec<Value>)];

/// One figure with a line per run: `y` (a path into each line) against `x`, over the per-step
/// lines (`event = None`) or over the lines of one event (`"knn"`, `"geometry"`).
pub(crate) fn overlay(
    runs: &Runs,
    (stem, title, x_label): (&'static str, &'static str, &'static str),
    event: Option<&str>,
    x: &str,
    y: &[&str],
) -> Figure {
    let series = runs
        .iter()
        .map(|(name, rows)| {
            let rows: Vec<&Value> = rows
                .iter()
                .filter(|r| match event {
                    None => r.get("event").is_none(),
                    Some(k) => r["event"] == k,
                })
                .collect();
            series(&rows, x, y, name)
        })
        .collect();
    Figure::new(stem, title, x_label, series)
}

/// The figures that set runs side by side (an experiment's arms, `simsiam report A B ...`):
/// the loss, the spread, kNN, Zhang et al.'s m_o of Z and P and the norms of the objective's
/// extra gradient's centre and residual parts, the heads' own losses (inverse predictor,
/// predictor off the gradient path), the off-diagonal correlation of Z,
/// the backbone's relative update, weight norm and residual branch gain, and the lr. Figures
/// without any point are for the caller to leave out.
pub(crate) fn overlays(runs: &Runs) -> Vec<Figure> {
    vec![
        overlay(runs, ("loss", "Training loss", "step"), None, "step", &["loss"]),
        overlay(
            runs,
            ("collapse_std", "sqrt(d) x collapse_std (1 = spread, 0 = collapsed)", "step"),
            None,
            "step",
            &["collapse_std_scaled"],
        ),
        overlay(runs, ("knn", "kNN top-1 (%)", "epoch"), Some("knn"), "epoch", &["knn_top1"]),
        overlay(runs, ("m_o_z", "m_o of Z (1 = collapsed)", "step"), None, "step", &["m_o_z"]),
        overlay(runs, ("m_o_p", "m_o of P (1 = collapsed)", "step"), None, "step", &["m_o_p"]),
        overlay(
            runs,
            ("o_e_norm", "Extra gradient G_e, centre part: |o_e| (Zhang et al.)", "step"),
            None,
            "step",
            &["o_e_norm"],
        ),
        overlay(
            runs,
            ("r_e_norm", "Extra gradient G_e, residual part: mean |r_e| (Zhang et al.)", "step"),
            None,
            "step",
            &["r_e_norm"],
        ),
        overlay(
            runs,
            ("inverse_loss", "The inverse predictor's own loss L_inv (Zhang et al. Fig. 3)", "step"),
            None,
            "step",
            &["inverse_loss"],
        ),
        overlay(
            runs,
            ("predictor_loss", "The predictor's own regression loss (predictor off the gradient path)", "step"),
            None,
            "step",
            &["predictor_loss"],
        ),
        overlay(
            runs,
            ("corr_offdiag", "Mean |off-diagonal correlation| of Z (eval subset)", "epoch"),
            Some("geometry"),
            "epoch",
            &["geometry", "z_off_diagonal", "corr_abs"],
        ),
        overlay(
            runs,
            ("update_backbone", "Relative update |Δw|/|w| of the backbone's weights per step", "step"),
            Some("weights"),
            "step",
            &["update", "backbone"],
        )
        .log_y(),
        overlay(
            runs,
            ("norm_backbone", "Norm |w| of the backbone's weights", "step"),
            Some("weights"),
            "step",
            &["norm", "backbone"],
        ),
        overlay(
            runs,
            ("branch_gain", "Residual branch gain: mean |gamma| of the blocks' last BN", "step"),
            Some("weights"),
            "step",
            &["branch_gain", "backbone"],
        )
        .log_y(),
        overlay(runs, ("lr", "Learning rate (encoder)", "step"), None, "step", &["lr"]),
    ]
}

/// The stages in the `what` maps of the `"weights"` lines (`monitor.weights`; of any line, as a
/// resumed run's older lines may lack some), the backbone's in network order, then the heads;
/// the whole-backbone aggregate left out.
fn weight_stages(lines: &[&Value], what: &str) -> Vec<String> {
    let mut keys: Vec<String> = lines
        .iter()
        .filter_map(|l| l[what].as_object())
        .flat_map(|m| m.keys().filter(|k| *k != "backbone").cloned())
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
    // Backbone stages in network order, then the heads.
    keys.sort_by_key(|k| (!(k == "stem" || k.starts_with("layer")), k != "stem", k.clone()));
    keys
}

/// One line per stage of the `"weights"` lines: `what` is `"update"`, `"norm"` or `"branch_gain"`.
fn per_stage(lines: &[&Value], what: &str) -> Vec<Series> {
    weight_stages(lines, what).iter().map(|k| series(lines, "step", &[what, k], k)).collect()
}

/// Renders the figures that have points into `dir`: (their SVGs as `<figure>`s, their PNGs as
/// markdown image lines, `dir` named `plots/` beside the markdown).
pub(crate) fn render_all(dir: &Path, figures: &[Figure]) -> Result<(String, String)> {
    let (mut svgs, mut md) = (String::new(), String::new());
    for f in figures.iter().filter(|f| f.series.iter().any(|(_, p)| !p.is_empty())) {
        svgs.push_str(&format!("<figure>{}</figure>\n", render(dir, f)?));
        md.push_str(&format!("![{}](plots/{}.png)\n", f.title, f.stem));
    }
    Ok((svgs, md))
}

/// One HTML page of a markdown report: its text up to the first image, then the SVG figures.
pub(crate) fn markdown_page(title: &str, md: &str, svgs: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1680px;margin:1em auto;padding:0 1em}}\
.plots{{display:grid;grid-template-columns:repeat(auto-fill,minmax(800px,1fr));gap:12px}}figure{{margin:0;border:1px solid #ddd}}figure svg{{width:100%;height:auto}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 10px}}</style></head><body><pre style=\"white-space:pre-wrap;font-family:sans-serif\">{md}</pre><div class=\"plots\">{svgs}</div></body></html>\n",
        t = html_escape(title),
        md = html_escape(md.split("![").next().unwrap_or(md))
    )
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What a run reached, for a reader: the step monitors at the first step and over the last
/// 10% of steps (the collapse verdict compares the two), kNN top-1 at initialisation and at
/// the last measurement, then whether it finished, its time, device and build. A run still
/// going is shown from its metrics so far.
fn figures_table(run: &Path, steps: &[&Value], knn: &[&Value], collapse: Option<&Value>) -> String {
    let summary: Option<crate::train::Summary> =
        std::fs::read_to_string(run.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    // No step logged yet (only the kNN at initialisation): no monitor rows to show.
    let (start, tail) = (crate::train::start_of(steps), (!steps.is_empty()).then(|| crate::train::tail_of(steps)));
    let row = |name: &str, first: String, last: String| {
        format!(
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            html_escape(name),
            html_escape(&first),
            html_escape(&last)
        )
    };
    let at = |f: &dyn Fn(&crate::train::Tail) -> String| {
        (start.as_ref().map_or("-".into(), f), tail.as_ref().map_or("-".into(), f))
    };
    let mut rows = vec!["<tr><th></th><th>first step</th><th>last 10% of steps</th></tr>".to_string()];
    for (name, (a, b)) in [
        ("loss (minimum -1)", at(&|t| format!("{:+.4}", t.loss))),
        ("sqrt(d)·collapse_std (1 = spread, 0 = collapsed)", at(&|t| format!("{:.3}", t.collapse_std_scaled))),
        ("m_o / m_r of Z (m_o = 1: collapsed)", at(&|t| format!("{:.3} / {:.3}", t.m_o_z, t.m_r_z))),
        ("m_o / m_r of P", at(&|t| format!("{:.3} / {:.3}", t.m_o_p, t.m_r_p))),
    ] {
        rows.push(row(name, a, b));
    }
    if let (Some(first), Some(last)) = (knn.first(), knn.last()) {
        let pct = |r: &Value| r["knn_top1"].as_f64().map_or("-".into(), |v| format!("{v:.2}%"));
        let name = format!("kNN top-1 (k = {}, t = {})", last["k"], last["t"]);
        rows.push(row(
            &name,
            format!("{} (epoch {})", pct(first), first["epoch"]),
            format!("{} (epoch {})", pct(last), last["epoch"]),
        ));
    }
    let status = match &summary {
        Some(s) => {
            let verdict = s
                .verdict
                .map(|v| format!("; collapse verdict: <b>{}</b>", html_escape(&format!("{v:?}"))))
                .unwrap_or_default();
            let build =
                if s.build.is_empty() { String::new() } else { format!(" Built with {}.", html_escape(&s.build)) };
            // How it computed (older summaries do not say), and fp16's skipped steps.
            let precision = match (s.precision.as_str(), s.skipped_steps) {
                ("", _) => String::new(),
                (p, Some(k)) => format!(", {}, {k} steps skipped for overflowed gradients", html_escape(p)),
                (p, None) => format!(", {}", html_escape(p)),
            };
            format!(
                "<p><b>Finished</b>: {} epochs, {} steps in {:.1} s ({:.0} images/s) on {}{precision}{verdict}.{build}</p>",
                s.epochs,
                s.steps,
                s.train_seconds,
                s.images_per_s,
                html_escape(&s.device)
            )
        }
        None => {
            // Steps count from 0: the last logged one is the number done minus one.
            let done = steps.last().and_then(|r| r["step"].as_u64()).map_or(0, |s| s + 1);
            format!("<p><b>Not finished</b> (no summary.json yet): {done} steps logged so far.</p>")
        }
    };
    // Training's own report of the first epoch whose means read as collapsed.
    let collapse = collapse.map_or(String::new(), |e| {
        format!(
            "<p>Training reported a <b>collapse in epoch {}</b>: mean loss {:+.4}, sqrt(d)·collapse_std {:.3}.</p>",
            e["epoch"].as_u64().map_or(0, |v| v + 1),
            e["loss"].as_f64().unwrap_or(f64::NAN),
            e["collapse_std_scaled"].as_f64().unwrap_or(f64::NAN)
        )
    });
    format!("{status}{collapse}<table>{}</table>", rows.concat())
}

/// Writes `<run>/report/*.png|svg` and `<run>/report.html`; returns the HTML path.
pub fn write_report(run: &Path) -> Result<PathBuf> {
    let metrics = run.join("metrics.jsonl");
    if !metrics.is_file() {
        let what =
            if run.join("config.toml").is_file() { "a run that has not logged a step yet" } else { "not a run folder" };
        return Err(Error::data(run, format!("{what}: no metrics.jsonl to report")));
    }
    let rows = read_lines(&metrics)?;
    let steps: Vec<&Value> = rows.iter().filter(|r| r.get("event").is_none()).collect();
    let knn: Vec<&Value> = rows.iter().filter(|r| r["event"] == "knn").collect();
    let geo: Vec<&Value> = rows.iter().filter(|r| r["event"] == "geometry").collect();
    let inst: Vec<&Value> = rows.iter().filter(|r| r["event"] == "instances").collect();
    let weights: Vec<&Value> = rows.iter().filter(|r| r["event"] == "weights").collect();
    let figures = [
        Figure::new("loss", "Training loss (minimum -1)", "step", vec![series(&steps, "step", &["loss"], "loss")]),
        Figure::new("knn", "kNN top-1 (%)", "epoch", vec![series(&knn, "epoch", &["knn_top1"], "kNN top-1")]),
        Figure::new(
            "collapse_std",
            "collapse_std x sqrt(d) (1 = spread, 0 = collapsed)",
            "step",
            vec![series(&steps, "step", &["collapse_std_scaled"], "sqrt(d) collapse_std")],
        ),
        Figure::new(
            "centre_residual",
            "Zhang et al.: m_o and m_r of Z and P",
            "step",
            vec![
                series(&steps, "step", &["m_o_z"], "m_o (Z)"),
                series(&steps, "step", &["m_r_z"], "m_r (Z)"),
                series(&steps, "step", &["m_o_p"], "m_o (P)"),
                series(&steps, "step", &["m_r_p"], "m_r (P)"),
            ],
        ),
        Figure::new(
            "head_losses",
            "The heads' own losses (trained apart from the encoder)",
            "step",
            vec![
                series(&steps, "step", &["inverse_loss"], "inverse predictor L_inv"),
                series(&steps, "step", &["predictor_loss"], "predictor regression"),
            ],
        ),
        Figure::new(
            "effective_rank",
            "Effective rank (eval subset)",
            "epoch",
            vec![
                series(&geo, "epoch", &["geometry", "z", "effective_rank"], "z (projector)"),
                series(&geo, "epoch", &["geometry", "y", "effective_rank"], "y (backbone)"),
            ],
        ),
        Figure::new(
            "instances",
            "Instance identification (B6): top-1 (%) and 100 x between-fraction",
            "epoch",
            vec![series(&inst, "epoch", &["top1"], "instance-ID top-1 (%)"), {
                let (n, p) = series(&inst, "epoch", &["between_fraction"], "100 x between fraction");
                (n, p.into_iter().map(|(x, y)| (x, 100.0 * y)).collect())
            }],
        ),
        Figure::new(
            "weights_update",
            "Relative update |Δw|/|w| per step, by stage",
            "step",
            per_stage(&weights, "update"),
        )
        .log_y(),
        Figure::new(
            "branch_gain",
            "Residual branch gain: mean |gamma| of each block's last BN, by stage",
            "step",
            per_stage(&weights, "branch_gain"),
        )
        .log_y(),
        Figure::new("weights_norm", "Weight norm |w|, by stage", "step", per_stage(&weights, "norm")),
        Figure::new("lr", "Learning rate (encoder)", "step", vec![series(&steps, "step", &["lr"], "lr")]),
        Figure::new(
            "throughput",
            "Throughput (images/s, two views each)",
            "step",
            vec![series(&steps, "step", &["images_per_s"], "images/s")],
        ),
    ];
    let dir = run.join("report");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut plots = String::new();
    for fig in figures.iter().filter(|f| f.series.iter().any(|(_, p)| !p.is_empty())) {
        let svg = render(&dir, fig)?;
        plots.push_str(&format!("<figure>{svg}<figcaption><a href=\"report/{0}.png\">PNG</a> · <a href=\"report/{0}.svg\">SVG</a></figcaption></figure>\n", fig.stem));
    }
    let collapse = rows.iter().find(|r| r["event"] == "collapse");
    let table = figures_table(run, &steps, &knn, collapse);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap_or_default();
    let title = format!("simsiam run {}", run.display());
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
body{{font-family:sans-serif;max-width:1680px;margin:1em auto;padding:0 1em;color:#222}}\
.plots{{display:grid;grid-template-columns:repeat(auto-fill,minmax(800px,1fr));gap:12px}}\
figure{{margin:0;border:1px solid #ddd}}figure svg{{width:100%;height:auto}}figcaption{{font-size:.8em;padding:2px 8px}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 10px;text-align:left}}\
pre{{background:#f6f6f6;padding:8px;overflow:auto}}</style></head><body>\
<h1>{t}</h1><h2>What it reached</h2>{table}<h2>Plots</h2><div class=\"plots\">{plots}</div>\
<h2>Config</h2><pre>{cfg}</pre></body></html>\n",
        t = html_escape(&title),
        cfg = html_escape(&config)
    );
    let path = run.join("report.html");
    std::fs::write(&path, html).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn x_ticks_are_counts_where_they_are_whole() {
        assert_eq!(super::x_tick(&50.0), "50");
        assert_eq!(super::x_tick(&0.0), "0");
        assert_eq!(super::x_tick(&-0.0), "0");
        assert_eq!(super::x_tick(&120000.0), "120000");
        assert_eq!(super::x_tick(&0.25), "0.25");
        assert_eq!(super::x_tick(&2.5000001), "2.5");
    }

    #[test]
    fn y_ticks_have_the_decimals_their_range_needs_and_no_negative_zero() {
        assert_eq!(super::tick_decimals(1.0), 1);
        assert_eq!(super::tick_decimals(16.0), 0);
        assert_eq!(super::tick_decimals(0.02), 3);
        assert_eq!(super::tick_decimals(0.0), 1);
        assert_eq!(super::fixed(-0.00001, 1), "0.0");
        assert_eq!(super::fixed(-0.1, 1), "-0.1");
        assert_eq!(super::fixed(12.0, 0), "12");
    }

    /// A line a running process has half written is left out; a bad line before it is an error.
    #[test]
    fn a_half_written_last_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":0,\"loss\":0.1}\n{\"step\":1,\"lo").unwrap();
        assert_eq!(super::read_lines(&p).unwrap().len(), 1);
        std::fs::write(&p, "{\"step\":0,\"lo\n{\"step\":1,\"loss\":0.1}\n").unwrap();
        assert!(super::read_lines(&p).unwrap_err().to_string().contains("line 1: not JSON"));
    }

    /// Past the palette's nine colours, lines come round dashed: the tenth arm's line is drawn in
    /// many short pieces, the ninth's in one; every arm keeps its legend entry.
    #[test]
    fn lines_past_the_palette_are_dashed() {
        // Every line within the same range, so the axes and grid are the same whatever the count.
        let line = |i: usize| (format!("arm-{i}"), (0..=40).map(|x| (x as f64, (x + i) as f64 % 40.0)).collect());
        let svg = |n: usize| {
            let dir = tempfile::tempdir().unwrap();
            let fig = super::Figure::new("f", "t", "step", (0..n).map(line).collect());
            super::render(dir.path(), &fig).unwrap()
        };
        let pieces = |s: &str| s.matches("<polyline").count() + s.matches("<line").count();
        let (nine, ten) = (svg(9), svg(10));
        assert!(pieces(&ten) > pieces(&nine) + 10, "{} vs {}", pieces(&ten), pieces(&nine));
        let (ten_a, eleven) = (svg(10), svg(11));
        assert_eq!(ten_a, ten, "rendering is deterministic");
        assert!(pieces(&eleven) > pieces(&ten) + 10);
        assert_eq!(eleven.matches("arm-").count(), 11, "every arm once in the legend");
    }

    /// A run that does not log a figure's value (the inverse predictor's loss of the arms without
    /// one) gets no legend entry there; the runs that do keep theirs.
    #[test]
    fn runs_without_points_are_left_out_of_the_legend() {
        let dir = tempfile::tempdir().unwrap();
        let fig = super::Figure::new(
            "f",
            "t",
            "step",
            vec![
                ("simsiam".into(), vec![]),
                ("inverse".into(), (0..10).map(|x| (x as f64, -(x as f64) / 10.0)).collect()),
                ("naive".into(), vec![]),
            ],
        );
        let svg = super::render(dir.path(), &fig).unwrap();
        let label = |name: &str| svg.lines().any(|l| l.trim() == name);
        assert!(label("inverse") && !label("simsiam") && !label("naive"), "{svg}");
    }

    /// A plot is written as an indexed PNG: exact for at most 256 colours; past that NeuQuant's
    /// palette keeps every pixel close and every line colour distinct.
    #[test]
    fn plots_are_indexed_pngs_that_keep_their_colours() {
        let dir = tempfile::tempdir().unwrap();
        let decode = |p: &std::path::Path| image::open(p).unwrap().to_rgb8().into_raw();
        // 200 colours: exact.
        let (w, h) = (40u32, 30u32);
        let few: Vec<u8> = (0..w * h).flat_map(|i| [(i % 200) as u8, 7, 255 - (i % 200) as u8]).collect();
        let p = dir.path().join("few.png");
        super::write_indexed_png(&p, &few, w, h).unwrap();
        assert_eq!(decode(&p), few);
        // A rendered plot (white page, nine line colours and their anti-aliased blends).
        let line = |i: usize| (format!("arm-{i}"), (0..=40).map(|x| (x as f64, ((x * (i + 1)) % 17) as f64)).collect());
        let fig = super::Figure::new("f", "t", "step", (0..9).map(line).collect());
        let rgb = super::rasterise(&fig).unwrap();
        let colours: std::collections::HashSet<&[u8]> = rgb.chunks_exact(3).collect();
        assert!(colours.len() > 256, "the test needs a plot past the exact palette: {}", colours.len());
        super::render(dir.path(), &fig).unwrap();
        let back = decode(&dir.path().join("f.png"));
        let err = back.iter().zip(&rgb).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / rgb.len() as f64;
        assert!(err < 1.0, "mean absolute error {err} of 255");
        // Every palette line colour is still present, to within a few levels.
        for c in super::COLOURS {
            let near = back.chunks_exact(3).any(|p| {
                (p[0] as i32 - c.0 as i32).abs() + (p[1] as i32 - c.1 as i32).abs() + (p[2] as i32 - c.2 as i32).abs()
                    <= 12
            });
            assert!(near, "line colour {c:?} lost");
        }
        let bytes = std::fs::metadata(dir.path().join("f.png")).unwrap().len();
        assert!(bytes < 60_000, "{bytes} bytes");
    }

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        use plotters::prelude::SeriesLabelPosition::*;
        let rising: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64, i as f64)).collect();
        let falling: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64, 10.0 - i as f64)).collect();
        let at = |pts: &[(f64, f64)]| {
            let pos = super::legend_corner(&[("a".to_string(), pts.to_vec())], (0.0, 10.0, 0.0, 10.0));
            format!("{pos:?}")
        };
        // A rising line fills the upper right and lower left corners; a falling one the others.
        assert_eq!(at(&rising), format!("{UpperLeft:?}"));
        assert_eq!(at(&falling), format!("{UpperRight:?}"));
        assert_eq!(at(&[]), format!("{UpperRight:?}"));
    }
}

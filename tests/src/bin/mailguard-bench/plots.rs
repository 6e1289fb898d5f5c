//! PNG plots of the measured figures, drawn by gnuplot (Debian's gnuplot-nox) from data
//! blocks the benchmark writes into each script; nothing is drawn from stored numbers.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

/// A bar's median, min and max.
pub type Bar = (f64, f64, f64);
/// A group's label and its bars, one per series.
pub type BarGroup = (String, Vec<Bar>);

/// Runs a gnuplot script that writes `png` (the script's `set output` is added here).
pub fn render(png: &Path, title: &str, script: &str) -> Result<(), String> {
    let full = format!(
        "set terminal pngcairo size 960,560 font 'sans,10' noenhanced\nset output '{}'\nset title '{}'\n{script}",
        png.display(),
        title.replace('\'', "")
    );
    let mut child = Command::new("gnuplot")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gnuplot (Debian package gnuplot-nox): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("gnuplot stdin")?
        .write_all(full.as_bytes())
        .map_err(|e| format!("gnuplot: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("gnuplot: {e}"))?;
    if !out.status.success() || !png.is_file() {
        return Err(format!(
            "gnuplot failed drawing {} ({}): {}",
            png.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Grouped bars with min-max error bars: one group per row of `rows` (label, then
/// (median, min, max) per series), one bar per series.
pub fn bars(
    png: &Path,
    title: &str,
    ylabel: &str,
    series: &[&str],
    rows: &[BarGroup],
) -> Result<(), String> {
    let mut data = String::from("$bars << EOD\n");
    for (label, values) in rows {
        data += &format!("\"{}\"", label.replace('"', "'"));
        for (m, lo, hi) in values {
            data += &format!(" {m:.1} {lo:.1} {hi:.1}");
        }
        data.push('\n');
    }
    data += "EOD\n";
    let plots: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let c = 2 + 3 * i;
            let label = if i == 0 { ":xtic(1)" } else { "" };
            format!(
                "$bars using {}:{}:{}{label} title '{name}'",
                c,
                c + 1,
                c + 2
            )
        })
        .collect();
    let script = format!(
        "{data}set style data histogram\nset style histogram errorbars gap 2 lw 1\n\
         set style fill solid 0.8 border -1\nset boxwidth 0.9\nset ylabel '{ylabel}'\nset yrange [0:*]\n\
         set grid ytics\nset key top left\nset xtics rotate by -30 left font ',8'\nset bmargin 9\n\
         plot {}\n",
        plots.join(", ")
    );
    render(png, title, &script)
}

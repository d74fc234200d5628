//! The table the harness prints: one row per figure, with its baseline from
//! the same runs, the ratio between them and the target it is held to.

use crate::stats::PerRun;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// Seconds, shown in µs, ms or s.
    Time,
    Bytes,
    /// Calls per second.
    Rate,
    Count,
}

/// Formats a value for a table cell.
pub fn format_value(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Time if value.abs() < 1e-3 => format!("{:.0} µs", value * 1e6),
        Unit::Time if value.abs() < 1.0 => format!("{:.2} ms", value * 1e3),
        Unit::Time => format!("{value:.2} s"),
        Unit::Bytes if value.abs() >= 1024.0 * 1024.0 * 1024.0 => {
            format!("{:.2} GiB", value / (1024.0 * 1024.0 * 1024.0))
        }
        Unit::Bytes => format!("{:.1} MiB", value / (1024.0 * 1024.0)),
        Unit::Rate => format!("{value:.0} calls/s"),
        Unit::Count => format!("{value:.0}"),
    }
}

/// Formats a ratio with two decimals, or with two significant digits when
/// it is below 0.1, so a tiny ratio does not show as 0.00.
fn format_ratio(ratio: f64) -> String {
    if ratio.abs() >= 0.1 || ratio == 0.0 {
        format!("{ratio:.2}")
    } else {
        let decimals = (-ratio.abs().log10()).ceil() as usize + 1;
        format!("{ratio:.decimals$}")
    }
}

#[derive(Debug, Clone)]
pub enum Cell {
    Empty,
    Text(String),
    /// One value per run: shown as the median with the range across runs.
    Values { runs: PerRun, unit: Unit },
}

impl Cell {
    pub fn values(runs: PerRun, unit: Unit) -> Cell {
        Cell::Values { runs, unit }
    }

    fn runs(&self) -> Option<&PerRun> {
        match self {
            Cell::Values { runs, .. } if runs.runs() > 0 => Some(runs),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Empty => String::new(),
            Cell::Text(text) => text.clone(),
            Cell::Values { runs, unit } if runs.runs() == 0 => format!("no runs ({unit:?})"),
            Cell::Values { runs, unit } => {
                let median = format_value(runs.median(), *unit);
                let (low, high) = (format_value(runs.min(), *unit), format_value(runs.max(), *unit));
                if runs.runs() == 1 || low == high {
                    return median;
                }
                // The range repeats the unit only where it differs from the median's.
                let unit_of = |text: &str| text.rsplit_once(' ').map(|(_, unit)| unit.to_string());
                let bare = |text: &str| match (text.rsplit_once(' '), unit_of(&median)) {
                    (Some((number, unit)), Some(median_unit)) if unit == median_unit => number.to_string(),
                    _ => text.to_string(),
                };
                format!("{median} ({} – {})", bare(&low), bare(&high))
            }
        }
    }
}

/// The target a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The measured value may exceed the baseline by at most this much, in
    /// the row's unit, taken as the median of the run-by-run differences.
    AboveBaselineAtMost(f64),
    /// The median run-by-run ratio to the baseline may be at most this.
    RatioAtMost(f64),
    /// The measured median may be at most this, in the row's unit.
    AtMost(f64),
}

pub struct Row {
    pub section: &'static str,
    pub figure: String,
    pub measured: Cell,
    pub baseline: Cell,
    pub target: Option<Target>,
    /// The unit of the target when neither cell has values.
    unit: Option<Unit>,
}

impl Row {
    pub fn new(section: &'static str, figure: impl Into<String>, measured: Cell, baseline: Cell) -> Row {
        Row { section, figure: figure.into(), measured, baseline, target: None, unit: None }
    }

    /// Sets the unit the target is shown in, for a row without values.
    pub fn in_unit(mut self, unit: Unit) -> Row {
        self.unit = Some(unit);
        self
    }

    pub fn with_target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    /// Creates a row for a figure that has no number, with the reason in its place.
    pub fn unavailable(section: &'static str, figure: impl Into<String>, reason: impl Into<String>) -> Row {
        Row::new(section, figure, Cell::Text(reason.into()), Cell::Empty)
    }

    fn unit(&self) -> Unit {
        if let Some(unit) = self.unit {
            return unit;
        }
        match (&self.measured, &self.baseline) {
            (Cell::Values { unit, .. }, _) | (_, Cell::Values { unit, .. }) => *unit,
            _ => Unit::Count,
        }
    }

    /// Pairs the measured and baseline values run by run, or pairs their
    /// medians when the two were taken a different number of times.
    fn paired(&self) -> Option<(PerRun, PerRun)> {
        let (measured, baseline) = (self.measured.runs()?, self.baseline.runs()?);
        if measured.runs() == baseline.runs() {
            Some((measured.clone(), baseline.clone()))
        } else {
            Some((PerRun(vec![measured.median()]), PerRun(vec![baseline.median()])))
        }
    }

    /// Ratios of the paired values, unless a baseline value is zero.
    fn ratios(&self) -> Option<PerRun> {
        let (measured, baseline) = self.paired()?;
        baseline.0.iter().all(|value| *value != 0.0).then(|| measured.ratio_to(&baseline))
    }

    fn render_ratio(&self) -> String {
        let Some(ratios) = self.ratios() else {
            return String::new();
        };
        let median = format_ratio(ratios.median());
        if ratios.runs() > 1 {
            format!("{median}× ({} – {})", format_ratio(ratios.min()), format_ratio(ratios.max()))
        } else {
            format!("{median}×")
        }
    }

    fn render_target(&self) -> String {
        let unit = self.unit();
        match self.target {
            None => String::new(),
            Some(Target::AboveBaselineAtMost(limit)) => format!("≤ baseline + {}", format_value(limit, unit)),
            Some(Target::RatioAtMost(limit)) => format!("≤ {limit}× baseline"),
            Some(Target::AtMost(limit)) => format!("≤ {}", format_value(limit, unit)),
        }
    }

    /// "met" or "missed" with the deciding number, or empty when the row has
    /// no target or no numbers.
    fn render_result(&self) -> String {
        let unit = self.unit();
        let verdict = |met: bool, detail: String| format!("{}: {detail}", if met { "met" } else { "missed" });
        match (self.target, self.measured.runs(), self.baseline.runs()) {
            (Some(Target::AboveBaselineAtMost(limit)), Some(_), Some(_)) => {
                let (measured, baseline) = self.paired().expect("both cells have values");
                let above = measured.minus(&baseline).median();
                let sign = if above >= 0.0 { "+" } else { "−" };
                verdict(above <= limit, format!("{sign}{}", format_value(above.abs(), unit)))
            }
            (Some(Target::RatioAtMost(limit)), Some(_), Some(_)) => match self.ratios() {
                Some(ratios) => verdict(ratios.median() <= limit, format!("{}×", format_ratio(ratios.median()))),
                None => String::new(),
            },
            (Some(Target::AtMost(limit)), Some(measured), _) => {
                verdict(measured.median() <= limit, format_value(measured.median(), unit))
            }
            _ => String::new(),
        }
    }

    fn render_runs(&self) -> String {
        match (self.measured.runs(), self.baseline.runs()) {
            (Some(measured), Some(baseline)) if measured.runs() != baseline.runs() => {
                format!("{} / {}", measured.runs(), baseline.runs())
            }
            (Some(measured), _) => measured.runs().to_string(),
            (None, Some(baseline)) => baseline.runs().to_string(),
            (None, None) => String::new(),
        }
    }
}

/// Renders rows as one Markdown table.
pub fn render_table(rows: &[Row]) -> String {
    let mut table = String::from(
        "| Section | Figure | Measured | Baseline | Ratio | Target | Result | Runs |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let cells = [
            row.section.to_string(),
            row.figure.clone(),
            row.measured.render(),
            row.baseline.render(),
            row.render_ratio(),
            row.render_target(),
            row.render_result(),
            row.render_runs(),
        ];
        let cells: Vec<String> = cells.iter().map(|cell| escape_cell(cell)).collect();
        table.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    table
}

fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_picks_a_readable_unit() {
        assert_eq!(format_value(0.000_085, Unit::Time), "85 µs");
        assert_eq!(format_value(0.0123, Unit::Time), "12.30 ms");
        assert_eq!(format_value(2.5, Unit::Time), "2.50 s");
        assert_eq!(format_value(3.0 * 1024.0 * 1024.0, Unit::Bytes), "3.0 MiB");
    }

    #[test]
    fn small_ratio_keeps_significant_digits() {
        assert_eq!(format_ratio(2.5), "2.50");
        assert_eq!(format_ratio(0.25), "0.25");
        assert_eq!(format_ratio(0.05), "0.050");
        assert_eq!(format_ratio(0.002), "0.0020");
        assert_eq!(format_ratio(0.0), "0.00");
    }

    #[test]
    fn range_repeats_only_a_different_unit() {
        let cell = Cell::values(PerRun(vec![0.000_900, 0.000_950, 0.001_500]), Unit::Time);
        assert_eq!(cell.render(), "950 µs (900 – 1.50 ms)");
        let cell = Cell::values(PerRun(vec![4000.0, 5000.0]), Unit::Rate);
        assert_eq!(cell.render(), "4500 calls/s (4000 – 5000)");
    }

    #[test]
    fn row_checks_overhead_target() {
        let row = Row::new(
            "warm",
            "p50",
            Cell::values(PerRun(vec![0.000_300, 0.000_320]), Unit::Time),
            Cell::values(PerRun(vec![0.000_100, 0.000_100]), Unit::Time),
        )
        .with_target(Target::AboveBaselineAtMost(0.000_100));
        let table = render_table(&[row]);
        assert!(table.contains("| 3.10× (3.00 – 3.20) |"), "{table}");
        assert!(table.contains("| ≤ baseline + 100 µs | missed: +210 µs | 2 |"), "{table}");
    }

    #[test]
    fn unavailable_row_has_no_result() {
        let table = render_table(&[Row::unavailable("cold", "prewarmed pool", "not implemented")]);
        assert!(table.ends_with("| cold | prewarmed pool | not implemented |  |  |  |  |  |\n"), "{table}");
    }
}

//! Percentiles and the result rows.

use std::time::Duration;

use serde::Serialize;

/// Latency samples.
#[derive(Default)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.0.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Figure number and what it measures.
    pub figure: String,
    /// The measured value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The baseline measured in the same run, if there is one.
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    /// The target, as text.
    pub target: String,
    /// Whether the target is met (None: no target).
    pub met: Option<bool>,
    /// Sample count or other context.
    pub note: String,
}

impl Row {
    pub fn new(figure: &str, value: f64, unit: &str) -> Row {
        Row {
            figure: figure.to_string(),
            value,
            unit: unit.to_string(),
            baseline: None,
            ratio: None,
            target: String::new(),
            met: None,
            note: String::new(),
        }
    }

    pub fn baseline(mut self, b: f64) -> Row {
        self.baseline = Some(b);
        self.ratio = (b > 0.0).then(|| (self.value / b * 100.0).round() / 100.0);
        self
    }

    pub fn target(mut self, text: &str, met: bool) -> Row {
        self.target = text.to_string();
        self.met = Some(met);
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }
}

/// Prints the rows as a table.
pub fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                format!("{} {}", fmt(r.value), r.unit),
                r.baseline.map(|b| format!("{} {}", fmt(b), r.unit)).unwrap_or_default(),
                r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
                r.target.clone(),
                match r.met {
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                    None => String::new(),
                },
                r.note.clone(),
            ]
        })
        .collect();
    let header = ["figure", "value", "raw libp2p", "ratio", "target", "", "note"];
    let mut w = header.map(|h| h.len());
    for c in &cells {
        for (i, x) in c.iter().enumerate() {
            w[i] = w[i].max(x.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, x) in c.iter().enumerate() {
            s.push_str(&format!("{x:<width$}  ", width = w[i]));
        }
        println!("{}", s.trim_end());
    };
    line(&header.map(String::from));
    for c in &cells {
        line(c);
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

//! Human-readable output helpers. Peer text is untrusted: terminal control characters are
//! replaced before it is printed.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// Writes one line to standard output. When the reader has gone away (`mesh inbox | head
/// -1`), the command stops at once, quietly and successfully, before it does anything
/// else: in particular before it marks as read messages nobody saw.
pub fn line(args: std::fmt::Arguments<'_>) {
    put(format_args!("{args}\n"));
}

/// Writes to standard output as it is (no line break added); see [`line()`].
pub fn put(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args);
    if let Err(e) = written.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for command output: see [`line()`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// Prints a value as pretty JSON.
pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    crate::outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON array printed element by element as the elements come (a list of any length in
/// bounded memory), laid out as [`json`] lays out a whole list.
#[derive(Default)]
pub struct JsonArray {
    started: bool,
}

impl JsonArray {
    /// Prints one more element.
    pub fn push<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        let piece = self.piece(v)?;
        put(format_args!("{piece}"));
        Ok(())
    }

    /// Closes the array.
    pub fn finish(self) {
        line(format_args!("{}", self.end()));
    }

    fn piece<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<String> {
        let item = serde_json::to_string_pretty(v)?.replace('\n', "\n  ");
        let open = if self.started { "," } else { "[" };
        self.started = true;
        Ok(format!("{open}\n  {item}"))
    }

    fn end(&self) -> &'static str {
        if self.started { "\n]" } else { "[]" }
    }
}

/// Prints a value as one JSON line (for streams).
pub fn json_line<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    crate::outln!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Peer text of several lines (a message body) made safe for the terminal: see
/// [`mesh_node::text::block`].
pub fn clean(s: &str) -> String {
    mesh_node::text::block(s)
}

/// One line of peer text (a name, a summary, a path): see [`mesh_node::text::field`].
pub fn field(s: &str) -> String {
    mesh_node::text::field(s, mesh_node::text::FIELD_MAX)
}

/// `2026-11-21T10:25:03Z`.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `5m 3s` style.
pub fn ago(ms: u64) -> String {
    let now = mesh_node::ids::now_ms();
    if ms == 0 || ms > now {
        return "-".into();
    }
    let secs = (now - ms) / 1000;
    let d = Duration::from_secs(secs);
    if secs == 0 {
        "just now".into()
    } else {
        format!(
            "{} ago",
            humantime::format_duration(d)
                .to_string()
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// A table with left-aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        crate::outln!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// Bytes as KiB/MiB.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_streamed_array_reads_like_a_whole_one() {
        let items = [
            serde_json::json!({"a": 1, "b": ["x\ny", {"c": null}]}),
            serde_json::json!({}),
        ];
        for n in 0..=items.len() {
            let mut array = super::JsonArray::default();
            let mut streamed = String::new();
            for v in &items[..n] {
                streamed.push_str(&array.piece(v).unwrap());
            }
            streamed.push_str(array.end());
            assert_eq!(streamed, serde_json::to_string_pretty(&items[..n]).unwrap());
        }
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(super::clean("a\x1b[31mred\r\nb\tc"), "a\u{fffd}[31mred\u{fffd}\nb\tc");
    }
}

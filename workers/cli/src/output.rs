//! Human tables and machine formats for command output.

use serde::Serialize;

use crate::cli::Format;

/// A command's outcome that is not a success and asks for its own exit code (`main` prints
/// the message as an error and exits with the code).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    /// The process's exit code.
    pub code: u8,
    /// What to say on stderr.
    pub message: String,
}

/// Print `rows` as a table with `headers`, or `value` as JSON or YAML.
pub fn print<T: Serialize>(
    format: Format,
    headers: &[&str],
    rows: &[Vec<String>],
    value: &T,
) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", table(headers, rows)),
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}

/// A record's fields as a FIELD/VALUE table, then a blank line (before what follows it).
pub fn print_fields(fields: &[Vec<String>]) {
    print!("{}", table(&["FIELD", "VALUE"], fields));
    println!();
}

/// Left-aligned columns, two spaces apart, headers first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// At most `max` characters, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["ID", "REASON"],
            &[
                vec!["a".into(), "x".into()],
                vec!["long-id".into(), "y".into()],
            ],
        );
        assert_eq!(t, "ID       REASON\na        x\nlong-id  y\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}

//! How results are printed: aligned tables for people, JSON for scripts.

use serde::Serialize;

pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, otherwise the table `rows` make.
    pub fn list<T: Serialize>(
        &self,
        value: &T,
        headers: &[&str],
        rows: impl IntoIterator<Item = Vec<String>>,
    ) {
        if self.json {
            self.print_json(value);
        } else {
            println!("{}", table(headers, rows));
        }
    }

    /// Prints `value` as JSON with `--json`, otherwise the `text`.
    pub fn item<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            self.print_json(value);
        } else {
            println!("{}", text());
        }
    }

    pub fn print_json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("edgefn: cannot encode the result as JSON: {error}"),
        }
    }
}

/// Columns aligned with two spaces between them, headers in capitals, no borders.
pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    // The preset pads every cell by one space on both sides; trim the outer ones.
    table
        .lines()
        .map(|line| {
            line.trim_end()
                .strip_prefix(' ')
                .unwrap_or(&line)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unix milliseconds as an RFC 3339 time (UTC, seconds).
pub fn time(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `-` for a missing value.
pub fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_borders() {
        let text = table(
            &["id", "name"],
            [
                vec!["fn-1".into(), "hello".into()],
                vec!["fn-22".into(), "x".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "NAME"]
        );
        assert_eq!(lines[1].find("hello"), lines[0].find("NAME"), "{text}");
        assert!(!text.contains('|') && !text.contains('+'), "{text}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(or_dash(None::<u64>), "-");
    }
}

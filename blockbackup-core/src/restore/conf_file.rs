//! PostgreSQL's configuration file syntax, as far as a restore needs it:
//! writing a value that the server reads back exactly, and finding the
//! files and directories a configuration includes (so that a restore can
//! be kept out of every directory the running server reads settings from).
//!
//! The rules are those of `guc-file.l`: `name [=] value` per line, `#`
//! starts a comment outside quotes, a quoted value doubles `'` and takes
//! backslash escapes, and `include`, `include_if_exists` and
//! `include_dir` name further files relative to the including file's
//! directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How deep configuration files may include each other (as PostgreSQL's
/// CONF_FILE_MAX_DEPTH).
const MAX_INCLUDE_DEPTH: usize = 10;

/// `value` quoted for a configuration file as `ALTER SYSTEM` writes it:
/// in single quotes, with `'` and `\` doubled, so that the server's
/// parser reads back exactly `value`. None when `value` holds a character
/// no quoted value can hold (a line break or another control character,
/// or NUL): such a value cannot round-trip and must be refused.
pub fn quote_value(value: &str) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push(c);
        }
        quoted.push(c);
    }
    quoted.push('\'');
    Some(quoted)
}

/// `name = value` lines (with a newline each) for `settings`, every value
/// quoted by [`quote_value`]; None if a value cannot be written.
pub fn setting_lines(settings: &[(&str, &str)]) -> Option<String> {
    let mut out = String::new();
    for (name, value) in settings {
        out.push_str(name);
        out.push_str(" = ");
        out.push_str(&quote_value(value)?);
        out.push('\n');
    }
    Some(out)
}

/// What an include directive names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Include {
    /// `include` or `include_if_exists`: a file.
    File(PathBuf),
    /// `include_dir`: every `*.conf` file in a directory.
    Directory(PathBuf),
}

/// The include directives of a configuration file's `text`, their paths
/// made absolute against `dir`, the directory of the file.
pub fn includes(text: &str, dir: &Path) -> Vec<Include> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = parse_line(line) else {
            continue;
        };
        let path = dir.join(value);
        match name.to_ascii_lowercase().as_str() {
            "include" | "include_if_exists" => found.push(Include::File(path)),
            "include_dir" => found.push(Include::Directory(path)),
            _ => {}
        }
    }
    found
}

/// The syntax of a configuration file: `postgresql.conf`'s, or that of
/// `pg_hba.conf` and `pg_ident.conf` (whitespace-separated tokens, double
/// quotes), which take include directives too from PostgreSQL 16 on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Settings,
    Authentication,
}

/// The directories a server reads configuration from, given the files it
/// starts from (`config_file` in settings syntax; `hba_file` and
/// `ident_file` in authentication syntax): the directory of each, and of
/// every file they include, followed as the server follows them, and every
/// `include_dir`.
pub fn configuration_directories(files: &[(PathBuf, Syntax)]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for (file, syntax) in files {
        follow_includes(file, *syntax, 0, &mut dirs);
    }
    dirs
}

fn follow_includes(file: &Path, syntax: Syntax, depth: usize, dirs: &mut BTreeSet<PathBuf>) {
    let Some(dir) = file.parent() else {
        return;
    };
    dirs.insert(dir.to_owned());
    if depth >= MAX_INCLUDE_DEPTH {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let found = match syntax {
        Syntax::Settings => includes(&text, dir),
        Syntax::Authentication => authentication_includes(&text, dir),
    };
    for include in found {
        match include {
            Include::File(path) => follow_includes(&path, syntax, depth + 1, dirs),
            Include::Directory(path) => {
                dirs.insert(path.clone());
                let Ok(entries) = std::fs::read_dir(&path) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".conf") && !name.starts_with('.') {
                        follow_includes(&entry.path(), syntax, depth + 1, dirs);
                    }
                }
            }
        }
    }
}

/// The include directives of a `pg_hba.conf` or `pg_ident.conf` text:
/// lines whose first token is `include`, `include_if_exists` or
/// `include_dir`, the second token (unquoted) naming the file.
pub fn authentication_includes(text: &str, dir: &Path) -> Vec<Include> {
    let mut found = Vec::new();
    for line in text.lines() {
        let tokens = authentication_tokens(line);
        let (Some(keyword), Some(value)) = (tokens.first(), tokens.get(1)) else {
            continue;
        };
        let path = dir.join(value);
        match keyword.as_str() {
            "include" | "include_if_exists" => found.push(Include::File(path)),
            "include_dir" => found.push(Include::Directory(path)),
            _ => {}
        }
    }
    found
}

/// The tokens of an authentication file line: separated by whitespace
/// (and commas), `#` starting a comment outside quotes, double quotes
/// grouping, `""` inside them a quote.
fn authentication_tokens(line: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    current.push('"');
                } else {
                    quoted = false;
                }
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '#' => break,
            '"' => {
                quoted = true;
                started = true;
            }
            c if c.is_whitespace() || c == ',' => {
                if started {
                    tokens.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        tokens.push(current);
    }
    tokens
}

/// `(name, value)` of a setting line, the value unquoted; None for blank,
/// comment and malformed lines.
fn parse_line(line: &str) -> Option<(&str, String)> {
    let line = line.trim_start();
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '-')))
        .unwrap_or(line.len());
    if name_len == 0 {
        return None;
    }
    let (name, rest) = line.split_at(name_len);
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    if let Some(quoted) = rest.strip_prefix('\'') {
        return Some((name, unquote(quoted)?));
    }
    let value: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '#')
        .collect();
    (!value.is_empty()).then_some((name, value))
}

/// The content of a quoted value whose opening quote was consumed.
fn unquote(rest: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                if chars.clone().next() == Some('\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Some(out);
                }
            }
            '\\' => match chars.next()? {
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            other => out.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_backslashes() {
        assert_eq!(quote_value("nightly").as_deref(), Some("'nightly'"));
        assert_eq!(quote_value("it's").as_deref(), Some("'it''s'"));
        assert_eq!(quote_value("nightly\\").as_deref(), Some("'nightly\\\\'"));
        assert_eq!(quote_value("a\\nb").as_deref(), Some("'a\\\\nb'"));
        assert_eq!(quote_value("x\ny"), None);
        assert_eq!(quote_value("x\ry"), None);
        assert_eq!(quote_value("x\u{0}y"), None);
    }

    #[test]
    fn quoted_values_read_back_as_written() {
        for value in ["plain", "it's", "back\\slash", "a\\nb", "''", "\\'", "é ü"] {
            let line = format!("recovery_target_name = {}", quote_value(value).unwrap());
            let (name, parsed) = parse_line(&line).unwrap();
            assert_eq!(name, "recovery_target_name");
            assert_eq!(parsed, value, "{line}");
        }
    }

    #[test]
    fn configuration_directories_follow_includes() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path();
        for dir in ["data", "conf.d", "extra", "hba.d", "deep"] {
            std::fs::create_dir(root.join(dir)).unwrap();
        }
        std::fs::write(
            root.join("data/postgresql.conf"),
            format!(
                "include_dir = '{}'\ninclude_if_exists '{}'\n",
                root.join("conf.d").display(),
                root.join("extra/x.conf").display()
            ),
        )
        .unwrap();
        std::fs::write(root.join("extra/x.conf"), "include '../deep/y.conf'\n").unwrap();
        std::fs::write(
            root.join("data/pg_hba.conf"),
            format!(
                "local all all trust # include_dir nowhere\ninclude_dir \"{}\"\n",
                root.join("hba.d").display()
            ),
        )
        .unwrap();
        let dirs = configuration_directories(&[
            (root.join("data/postgresql.conf"), Syntax::Settings),
            (root.join("data/pg_hba.conf"), Syntax::Authentication),
        ]);
        let expected: BTreeSet<PathBuf> = ["data", "conf.d", "extra", "hba.d", "deep"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        let found: BTreeSet<PathBuf> = dirs
            .into_iter()
            .map(|d| d.canonicalize().unwrap_or(d))
            .collect();
        let expected: BTreeSet<PathBuf> = expected
            .into_iter()
            .map(|d| d.canonicalize().unwrap())
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn includes_are_found_in_every_spelling() {
        let text = "\
# include 'commented.conf'
shared_buffers = 128MB
include 'a.conf'
include_if_exists = '/etc/abs.conf'   # trailing comment
  INCLUDE_DIR conf.d
include_dir = 'it''s dir'
max_connections 100
";
        let found = includes(text, Path::new("/data"));
        assert_eq!(
            found,
            vec![
                Include::File(PathBuf::from("/data/a.conf")),
                Include::File(PathBuf::from("/etc/abs.conf")),
                Include::Directory(PathBuf::from("/data/conf.d")),
                Include::Directory(PathBuf::from("/data/it's dir")),
            ]
        );
    }
}

//! Output formatting shared by every listing command: Docker's `--format`
//! (a Go-template subset), `--format json`, `table` formats with Docker's
//! column alignment, and Docker's human-readable sizes and durations.
//!
//! Scripts parse `docker images` / `docker ps` output and feed `--format`
//! strings written for Docker, so the strings here match Docker byte for byte:
//! the tab writer is Go's `text/tabwriter` with Docker's settings (minimum
//! cell width 10, padding 3), sizes are go-units' `HumanSize` (decimal units,
//! Go's `%.Ng`), durations are go-units' `HumanDuration`.
//!
//! Template subset (Go `text/template` semantics, data is JSON-like):
//! - text and `{{ pipeline }}` actions, `{{-`/`-}}` whitespace trimming,
//!   `{{/* comments */}}`;
//! - operands: `.`, `.Field.Sub`, `$`, `$var`, `$var.Field`, `"strings"`,
//!   `` `raw strings` ``, integers, `true`/`false`/`nil`, `( pipeline )`;
//! - pipelines `a | f | g` (the value is passed as the last argument);
//! - `if`/`else if`/`else`/`end`, `range` (with `$v :=` or `$k, $v :=`) and
//!   `with`, each with an optional `else`; `$x := pipeline`;
//! - functions: Docker's `json join split lower upper title pad truncate` and
//!   Go's `index len print println printf eq ne lt le gt ge and or not`.
//!
//! Values print as Go prints them: strings raw, lists `[a b]`, maps
//! `map[k:v]`, null `<nil>`, a missing key `<no value>`.

use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// A template that does not parse or cannot be executed on the data.
/// Displays as Docker's `template parsing error: template: ...`.
#[derive(Debug)]
pub struct FormatError(String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template parsing error: template: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

fn err<T>(msg: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(msg.into()))
}

// ---------------------------------------------------------------------------
// Human-readable sizes and durations (go-units).

/// go-units `HumanSizeWithPrecision`: decimal units, `%.{precision}g`.
/// Docker uses precision 3 in `images`/`history` and 4 (`HumanSize`) in
/// `system df` and prune totals.
pub fn human_size_precision(size: f64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = size;
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_format_g(size, precision), UNITS[i])
}

/// go-units `HumanSize` (4 significant digits).
pub fn human_size(size: u64) -> String {
    human_size_precision(size as f64, 4)
}

/// Go's `time.ParseDuration` (the builder's reading of HEALTHCHECK
/// durations, for the same syntax in flags).
pub fn go_duration(s: &str) -> Option<chrono::Duration> {
    strata_builder::config_change::parse_duration(s).map(chrono::Duration::nanoseconds)
}

/// go-units `BytesSize` (binary units, 4 significant digits): `3.832GiB`.
pub fn bytes_size(n: u64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{}{}", go_format_g(v, 4), UNITS[i])
}

/// Docker's size column (3 significant digits), e.g. `4.26MB`.
pub fn human_size3(size: u64) -> String {
    human_size_precision(size as f64, 3)
}

/// Go's `fmt.Sprintf("%.*g", precision, v)`: `precision` significant digits,
/// trailing zeros removed, exponent form when the exponent is < -4 or
/// >= precision (so 999.9 with precision 3 prints `1e+03`, as Docker does).
pub fn go_format_g(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let p = precision.max(1);
    // Rust's `{:e}` rounds correctly to p significant digits; read the exponent back.
    let sci = format!("{:.*e}", p - 1, v);
    let (mant, exp) = match sci.split_once('e') {
        Some((m, e)) => (m.to_string(), e.parse::<i32>().unwrap_or(0)),
        None => (sci.clone(), 0),
    };
    if exp < -4 || exp >= p as i32 {
        let mant = trim_fraction_zeros(&mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_fraction_zeros(&format!("{:.*}", decimals, v))
    }
}

fn trim_fraction_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// go-units `HumanDuration`, e.g. `About an hour`, `2 days`.
pub fn human_duration(d: Duration) -> String {
    let secs_f = d.as_secs_f64();
    let seconds = secs_f as i64;
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = (secs_f / 60.0) as i64;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (secs_f / 3600.0 + 0.5) as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (secs_f / 3600.0) as i64 / 24 / 365)
}

/// `2 days ago` for a Unix timestamp, as Docker's CREATED columns print it.
/// Timestamps in the future count as "Less than a second ago", like Go.
pub fn human_since(unix_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let ms = (now - unix_secs.saturating_mul(1000)).max(0) as u64;
    format!("{} ago", human_duration(Duration::from_millis(ms)))
}

/// Docker's `Ellipsis`: cut to `max` characters, the last one being `…`.
pub fn ellipsis(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if max == 0 {
        return String::new();
    }
    if max == 1 {
        return s.chars().next().map(String::from).unwrap_or_default();
    }
    if n <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

// ---------------------------------------------------------------------------
// Tab writer (Go text/tabwriter with Docker's settings).

const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Aligns tab-separated cells into columns exactly as Docker's tab writer
/// does: every tab-terminated cell is padded with spaces to the widest cell
/// of its column block plus 3 (at least 10); the text after a line's last
/// tab is not part of a column. A line without tabs ends a column block.
pub fn tabwrite(text: &str) -> String {
    // `split` yields a final empty line after a trailing newline; keeping it
    // preserves newlines one-for-one.
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() * 2);
    let total = lines.len();
    let mut start = 0;
    for i in 0..total {
        if lines[i].len() == 1 || i + 1 == total {
            let block = &lines[start..=i];
            let mut widths = Vec::new();
            format_block(block, 0, block.len(), &mut widths, &mut out);
            if i + 1 != total {
                out.push('\n');
            }
            start = i + 1;
        }
    }
    out
}

/// Go's `Writer.format`: finds the column blocks of column `widths.len()`
/// among lines `l0..l1`, recursing into the next column for each block.
fn format_block(lines: &[Vec<&str>], mut l0: usize, l1: usize, widths: &mut Vec<usize>, out: &mut String) {
    let column = widths.len();
    let mut this = l0;
    while this < l1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, l0, this, widths, out);
        l0 = this;
        let mut width = MIN_WIDTH;
        while this < l1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, l0, this, widths, out);
        widths.pop();
        l0 = this;
        // Go's loop increments past the line that ended the block; that line
        // has no cell in this column, so skipping the check is harmless.
        this += 1;
    }
    write_lines(lines, l0, l1, widths, out);
}

fn write_lines(lines: &[Vec<&str>], l0: usize, l1: usize, widths: &[usize], out: &mut String) {
    for (i, line) in lines.iter().enumerate().take(l1).skip(l0) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() && j + 1 < line.len() {
                let w = cell.chars().count();
                out.extend(std::iter::repeat_n(' ', widths[j].saturating_sub(w)));
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

// ---------------------------------------------------------------------------
// Template parsing.

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If { pipe: Pipeline, then: Vec<Node>, otherwise: Vec<Node> },
    Range { pipe: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
    With { pipe: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
}

#[derive(Debug, Clone)]
struct Pipeline {
    /// Variables declared with `:=` (one, or key and value for range).
    decl: Vec<String>,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone)]
enum Arg {
    Dot,
    /// `.A.B` relative to dot.
    Field(Vec<String>),
    /// `$name.A.B` (`$` alone is the root).
    Var(String, Vec<String>),
    Lit(Value),
    Ident(String),
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    Field(String),
    /// `.Name` directly after an operand (no space): a field of that operand.
    Chain(String),
    Var(String),
    Str(String),
    Num(Value),
    Ident(String),
    LParen,
    RParen,
    Pipe,
    Declare,
    Comma,
}

/// A parsed template; see the module docs for the supported subset.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, FormatError> {
        let items = lex_actions(src)?;
        let mut pos = 0;
        let (nodes, end) = parse_list(&items, &mut pos)?;
        if let Some(e) = end {
            return err(format!(":1: unexpected {{{{{e}}}}}"));
        }
        Ok(Template { nodes })
    }

    /// Renders with `data` as dot. `strict`: a field missing from an object
    /// is an error (Docker's typed listing contexts) rather than `<no value>`
    /// (Docker's inspect, which falls back to raw JSON maps).
    pub fn render(&self, data: &Value, strict: bool) -> Result<String, FormatError> {
        let mut st = State { root: data.clone(), vars: vec![], strict, header: false };
        let mut out = String::new();
        st.exec_list(&self.nodes, &Some(data.clone()), &mut out)?;
        Ok(out)
    }

    /// Renders the header row of a table: each field is looked up in
    /// `headers` (field name -> column title) and formatting functions pass
    /// their argument through, as Docker's header functions do.
    pub fn render_header(&self, headers: &[(&str, &str)]) -> Result<String, FormatError> {
        let mut m = Map::new();
        for (k, v) in headers {
            m.insert(k.to_string(), Value::String(v.to_string()));
        }
        let data = Value::Object(m);
        let mut st = State { root: data.clone(), vars: vec![], strict: false, header: true };
        let mut out = String::new();
        st.exec_list(&self.nodes, &Some(data), &mut out)?;
        Ok(out)
    }
}

/// Raw template pieces: text or the inside of one `{{ }}`.
enum Item {
    Text(String),
    Action(String),
}

fn lex_actions(src: &str) -> Result<Vec<Item>, FormatError> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let t = if trim_next { rest.trim_start_matches(is_space) } else { rest };
            items.push(Item::Text(t.to_string()));
            break;
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let mut inner_start = open + 2;
        if rest[inner_start..].starts_with("- ") || rest[inner_start..].starts_with("-\t") {
            text = text.trim_end_matches(is_space);
            inner_start += 1;
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_string()));
        }
        let Some(close_rel) = find_close(&rest[inner_start..]) else {
            return err(":1: unclosed action");
        };
        let mut inner = &rest[inner_start..inner_start + close_rel];
        trim_next = false;
        if inner.ends_with(" -") || inner.ends_with("\t-") {
            inner = &inner[..inner.len() - 1];
            trim_next = true;
        }
        let trimmed = inner.trim();
        if !(trimmed.starts_with("/*") && trimmed.ends_with("*/")) {
            items.push(Item::Action(trimmed.to_string()));
        }
        rest = &rest[inner_start + close_rel + 2..];
    }
    Ok(items)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Finds the `}}` closing an action, skipping over string literals.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parses nodes until `end`/`else` (returned as the terminator's text) or the end.
fn parse_list(items: &[Item], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), FormatError> {
    let mut nodes = Vec::new();
    while *pos < items.len() {
        let item = &items[*pos];
        *pos += 1;
        let action = match item {
            Item::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Item::Action(a) => a.as_str(),
        };
        let (word, rest) = match action.find(|c: char| c.is_whitespace()) {
            Some(i) => (&action[..i], action[i..].trim()),
            None => (action, ""),
        };
        match word {
            "end" | "else" => return Ok((nodes, Some(action.to_string()))),
            "if" | "range" | "with" => nodes.push(parse_control(word, rest, items, pos)?),
            "define" | "template" | "block" | "break" | "continue" => {
                return err(format!(":1: {{{{{word}}}}} is not supported by strata's --format"));
            }
            _ => nodes.push(Node::Action(parse_pipeline(action)?)),
        }
    }
    Ok((nodes, None))
}

fn parse_control(word: &str, rest: &str, items: &[Item], pos: &mut usize) -> Result<Node, FormatError> {
    let pipe = parse_pipeline(rest)?;
    let (body, term) = parse_list(items, pos)?;
    let mut otherwise = Vec::new();
    match term.as_deref() {
        Some("end") => {}
        Some("else") => {
            let (o, t2) = parse_list(items, pos)?;
            if t2.as_deref() != Some("end") {
                return err(format!(":1: missing {{{{end}}}} for {{{{{word}}}}}"));
            }
            otherwise = o;
        }
        Some(t) if t.starts_with("else ") => {
            // `else if X` (or `else with X`): a nested control ending at the same `end`.
            let inner = t["else ".len()..].trim();
            let (w2, r2) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
            if !matches!(w2, "if" | "with") {
                return err(format!(":1: unexpected {{{{{t}}}}}"));
            }
            otherwise = vec![parse_control(w2, r2.trim(), items, pos)?];
        }
        _ => return err(format!(":1: missing {{{{end}}}} for {{{{{word}}}}}")),
    }
    Ok(match word {
        "if" => Node::If { pipe, then: body, otherwise },
        "range" => Node::Range { pipe, body, otherwise },
        _ => Node::With { pipe, body, otherwise },
    })
}

fn tokenize(s: &str) -> Result<Vec<Tok>, FormatError> {
    let mut toks = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    while i < cs.len() {
        let c = cs[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                toks.push(Tok::LParen);
                i += 1
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1
            }
            '|' => {
                toks.push(Tok::Pipe);
                i += 1
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1
            }
            ':' if cs.get(i + 1) == Some(&'=') => {
                toks.push(Tok::Declare);
                i += 2
            }
            '=' => {
                toks.push(Tok::Declare);
                i += 1
            }
            '.' => {
                i += 1;
                let start = i;
                while i < cs.len() && ident_char(cs[i]) {
                    i += 1;
                }
                let name: String = cs[start..i].iter().collect();
                let chained = start >= 2
                    && !cs[start - 2].is_whitespace()
                    && matches!(toks.last(), Some(Tok::Field(_) | Tok::Chain(_) | Tok::Var(_) | Tok::RParen));
                if name.is_empty() {
                    toks.push(Tok::Dot);
                } else if chained {
                    toks.push(Tok::Chain(name));
                } else {
                    toks.push(Tok::Field(name));
                }
            }
            '$' => {
                i += 1;
                let start = i;
                while i < cs.len() && ident_char(cs[i]) {
                    i += 1;
                }
                toks.push(Tok::Var(cs[start..i].iter().collect()));
            }
            '"' => {
                i += 1;
                let mut v = String::new();
                loop {
                    let Some(&ch) = cs.get(i) else { return err(":1: unterminated quoted string") };
                    i += 1;
                    match ch {
                        '"' => break,
                        '\\' => {
                            let Some(&e) = cs.get(i) else { return err(":1: unterminated quoted string") };
                            i += 1;
                            v.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '0' => '\0',
                                other => other,
                            });
                        }
                        other => v.push(other),
                    }
                }
                toks.push(Tok::Str(v));
            }
            '`' => {
                i += 1;
                let start = i;
                while i < cs.len() && cs[i] != '`' {
                    i += 1;
                }
                if i >= cs.len() {
                    return err(":1: unterminated raw quoted string");
                }
                toks.push(Tok::Str(cs[start..i].iter().collect()));
                i += 1;
            }
            c if c.is_ascii_digit() || (c == '-' && cs.get(i + 1).is_some_and(|d| d.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                    i += 1;
                }
                let text: String = cs[start..i].iter().collect();
                let num = if let Ok(n) = text.parse::<i64>() {
                    Value::from(n)
                } else if let Ok(f) = text.parse::<f64>() {
                    Value::from(f)
                } else {
                    return err(format!(":1: bad number syntax: {text:?}"));
                };
                toks.push(Tok::Num(num));
            }
            c if ident_char(c) => {
                let start = i;
                while i < cs.len() && ident_char(cs[i]) {
                    i += 1;
                }
                toks.push(Tok::Ident(cs[start..i].iter().collect()));
            }
            other => return err(format!(":1: unexpected {other:?} in command")),
        }
    }
    Ok(toks)
}

fn parse_pipeline(src: &str) -> Result<Pipeline, FormatError> {
    let toks = tokenize(src)?;
    let mut pos = 0;
    let p = parse_pipe_toks(&toks, &mut pos)?;
    if pos != toks.len() {
        return err(format!(":1: unexpected {:?} in operand", toks[pos]));
    }
    Ok(p)
}

fn parse_pipe_toks(toks: &[Tok], pos: &mut usize) -> Result<Pipeline, FormatError> {
    let mut decl = Vec::new();
    // Declarations: `$x :=` or `$k, $v :=`.
    let save = *pos;
    let mut vars = Vec::new();
    while let Some(Tok::Var(v)) = toks.get(*pos) {
        vars.push(v.clone());
        *pos += 1;
        match toks.get(*pos) {
            Some(Tok::Comma) => *pos += 1,
            Some(Tok::Declare) => {
                *pos += 1;
                decl = std::mem::take(&mut vars);
                break;
            }
            _ => break,
        }
    }
    if decl.is_empty() {
        *pos = save;
    }
    let mut cmds = Vec::new();
    let mut cur: Vec<Arg> = Vec::new();
    while let Some(t) = toks.get(*pos) {
        match t {
            Tok::RParen => break,
            Tok::Pipe => {
                if cur.is_empty() {
                    return err(":1: missing command before |");
                }
                cmds.push(std::mem::take(&mut cur));
                *pos += 1;
            }
            Tok::Dot => {
                cur.push(Arg::Dot);
                *pos += 1;
            }
            Tok::Field(name) => {
                *pos += 1;
                let mut f = vec![name.clone()];
                f.extend(take_fields(toks, pos));
                cur.push(Arg::Field(f));
            }
            Tok::Chain(_) => return err(":1: unexpected field chain"),
            Tok::Var(v) => {
                let v = v.clone();
                *pos += 1;
                cur.push(Arg::Var(v, take_fields(toks, pos)));
            }
            Tok::Str(s) => {
                cur.push(Arg::Lit(Value::String(s.clone())));
                *pos += 1;
            }
            Tok::Num(n) => {
                cur.push(Arg::Lit(n.clone()));
                *pos += 1;
            }
            Tok::Ident(id) => {
                cur.push(match id.as_str() {
                    "true" => Arg::Lit(Value::Bool(true)),
                    "false" => Arg::Lit(Value::Bool(false)),
                    "nil" => Arg::Lit(Value::Null),
                    _ => Arg::Ident(id.clone()),
                });
                *pos += 1;
            }
            Tok::LParen => {
                *pos += 1;
                let inner = parse_pipe_toks(toks, pos)?;
                if toks.get(*pos) != Some(&Tok::RParen) {
                    return err(":1: unclosed left paren");
                }
                *pos += 1;
                cur.push(Arg::Sub(Box::new(inner), take_fields(toks, pos)));
            }
            Tok::Comma | Tok::Declare => return err(":1: unexpected token in command"),
        }
    }
    if cur.is_empty() {
        if cmds.is_empty() {
            return err(":1: missing value for command");
        }
        return err(":1: missing command after |");
    }
    cmds.push(cur);
    Ok(Pipeline { decl, cmds })
}

fn take_fields(toks: &[Tok], pos: &mut usize) -> Vec<String> {
    let mut f = Vec::new();
    while let Some(Tok::Chain(name)) = toks.get(*pos) {
        f.push(name.clone());
        *pos += 1;
    }
    f
}

// ---------------------------------------------------------------------------
// Template execution. `None` is Go's "no value" (a missing map key).

type Val = Option<Value>;

struct State {
    root: Value,
    vars: Vec<(String, Val)>,
    strict: bool,
    header: bool,
}

impl State {
    fn exec_list(&mut self, nodes: &[Node], dot: &Val, out: &mut String) -> Result<(), FormatError> {
        let mark = self.vars.len();
        for n in nodes {
            self.exec(n, dot, out)?;
        }
        self.vars.truncate(mark);
        Ok(())
    }

    fn exec(&mut self, node: &Node, dot: &Val, out: &mut String) -> Result<(), FormatError> {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => {
                let v = self.pipeline(p, dot)?;
                if p.decl.is_empty() {
                    out.push_str(&go_print(&v));
                } else if let Some(name) = p.decl.first() {
                    self.vars.push((name.clone(), v));
                }
            }
            Node::If { pipe, then, otherwise } => {
                let v = self.pipeline(pipe, dot)?;
                let branch = if truthy(&v) { then } else { otherwise };
                self.exec_list(branch, dot, out)?;
            }
            Node::With { pipe, body, otherwise } => {
                let v = self.pipeline(pipe, dot)?;
                if truthy(&v) {
                    self.exec_list(body, &v, out)?;
                } else {
                    self.exec_list(otherwise, dot, out)?;
                }
            }
            Node::Range { pipe, body, otherwise } => {
                let v = self.pipeline(pipe, dot)?;
                let elems: Vec<(Value, Value)> = match &v {
                    Some(Value::Array(a)) => a.iter().enumerate().map(|(i, e)| (Value::from(i), e.clone())).collect(),
                    Some(Value::Object(m)) => m.iter().map(|(k, e)| (Value::String(k.clone()), e.clone())).collect(),
                    None | Some(Value::Null) => vec![],
                    Some(Value::Number(n)) if n.as_u64().is_some() => {
                        (0..n.as_u64().unwrap_or(0)).map(|i| (Value::from(i), Value::from(i))).collect()
                    }
                    Some(other) => {
                        return err(format!(":1: range can't iterate over {}", go_print(&Some(other.clone()))))
                    }
                };
                if elems.is_empty() {
                    return self.exec_list(otherwise, dot, out);
                }
                for (k, e) in elems {
                    let mark = self.vars.len();
                    match pipe.decl.as_slice() {
                        [v] => self.vars.push((v.clone(), Some(e.clone()))),
                        [kn, vn, ..] => {
                            self.vars.push((kn.clone(), Some(k)));
                            self.vars.push((vn.clone(), Some(e.clone())));
                        }
                        [] => {}
                    }
                    self.exec_list(body, &Some(e), out)?;
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &Val) -> Result<Val, FormatError> {
        let mut last: Option<Val> = None;
        for cmd in &p.cmds {
            last = Some(self.command(cmd, dot, last.take())?);
        }
        Ok(last.flatten())
    }

    fn command(&mut self, cmd: &[Arg], dot: &Val, piped: Option<Val>) -> Result<Val, FormatError> {
        if let Some(Arg::Ident(name)) = cmd.first() {
            let mut args = Vec::with_capacity(cmd.len());
            for a in &cmd[1..] {
                args.push(self.arg(a, dot)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            return self.call(name, args);
        }
        // Docker's one method of listing rows: `.Label "KEY"`, a label's
        // value from the row's `Labels` (empty when it has none).
        if let Some(Arg::Field(path)) = cmd.first() {
            if path.last().is_some_and(|f| f == "Label") && cmd.len() + usize::from(piped.is_some()) == 2 {
                let key = match (cmd.get(1), piped) {
                    (Some(a), _) => self.arg(a, dot)?,
                    (None, p) => p.flatten(),
                };
                let owner = self.fields(dot.clone(), &path[..path.len() - 1])?;
                let labels = owner.as_ref().and_then(|o| o.get("Labels"));
                return Ok(Some(Value::String(label_value(labels, &go_print(&key)))));
            }
        }
        if cmd.len() > 1 || piped.is_some() {
            return err(":1: can't give argument to non-function");
        }
        match cmd.first() {
            Some(a) => self.arg(a, dot),
            None => Ok(None),
        }
    }

    fn arg(&mut self, a: &Arg, dot: &Val) -> Result<Val, FormatError> {
        match a {
            Arg::Dot => Ok(dot.clone()),
            Arg::Field(f) => self.fields(dot.clone(), f),
            Arg::Var(name, f) => {
                let base = if name.is_empty() {
                    Some(self.root.clone())
                } else {
                    match self.vars.iter().rev().find(|(n, _)| n == name) {
                        Some((_, v)) => v.clone(),
                        None => return err(format!(":1: undefined variable: ${name}")),
                    }
                };
                self.fields(base, f)
            }
            Arg::Lit(v) => Ok(Some(v.clone())),
            Arg::Ident(name) => self.call(name, vec![]),
            Arg::Sub(p, f) => {
                let v = self.pipeline(p, dot)?;
                self.fields(v, f)
            }
        }
    }

    fn fields(&self, mut v: Val, fields: &[String]) -> Result<Val, FormatError> {
        for f in fields {
            v = match v {
                Some(Value::Object(ref m)) => match m.get(f) {
                    Some(x) => Some(x.clone()),
                    None if self.strict => {
                        return err(format!(":1: executing \"\" at <.{f}>: can't evaluate field {f}"));
                    }
                    None => None,
                },
                None | Some(Value::Null) => None,
                Some(other) => {
                    return err(format!(
                        ":1: executing \"\" at <.{f}>: can't evaluate field {f} in type {}",
                        go_type(&other)
                    ));
                }
            };
        }
        Ok(v)
    }

    fn call(&self, name: &str, args: Vec<Val>) -> Result<Val, FormatError> {
        let want = |n: usize| -> Result<(), FormatError> {
            if args.len() != n {
                return err(format!(":1: wrong number of args for {name}: want {n} got {}", args.len()));
            }
            Ok(())
        };
        let s = |i: usize| -> String { go_print(&args[i]) };
        let string = |x: String| Ok(Some(Value::String(x)));
        // In a table header, formatting functions return the column title unchanged.
        if self.header && matches!(name, "json" | "split" | "join" | "title" | "lower" | "upper" | "truncate") {
            return Ok(args.into_iter().next().flatten());
        }
        match name {
            "json" => {
                want(1)?;
                let v = args[0].clone().unwrap_or(Value::Null);
                string(serde_json::to_string(&v).unwrap_or_default())
            }
            "join" => {
                want(2)?;
                let sep = s(1);
                match &args[0] {
                    Some(Value::Array(a)) => {
                        string(a.iter().map(|e| go_print(&Some(e.clone()))).collect::<Vec<_>>().join(&sep))
                    }
                    None | Some(Value::Null) => string(String::new()),
                    other => string(go_print(other)),
                }
            }
            "split" => {
                want(2)?;
                let (text, sep) = (s(0), s(1));
                let parts: Vec<Value> = if sep.is_empty() {
                    text.chars().map(|c| Value::String(c.to_string())).collect()
                } else {
                    text.split(sep.as_str()).map(|p| Value::String(p.to_string())).collect()
                };
                Ok(Some(Value::Array(parts)))
            }
            "lower" => {
                want(1)?;
                string(s(0).to_lowercase())
            }
            "upper" => {
                want(1)?;
                string(s(0).to_uppercase())
            }
            "title" => {
                want(1)?;
                let mut prev_letter = false;
                string(
                    s(0).chars()
                        .map(|c| {
                            let r = if !prev_letter { c.to_uppercase().next().unwrap_or(c) } else { c };
                            prev_letter = c.is_alphanumeric() || c == '_' || c == '\'';
                            r
                        })
                        .collect(),
                )
            }
            "pad" => {
                want(3)?;
                let text = s(0);
                if text.is_empty() {
                    return string(text);
                }
                let n = |i: usize| as_int(&args[i]).unwrap_or(0).max(0) as usize;
                string(format!("{}{}{}", " ".repeat(n(1)), text, " ".repeat(n(2))))
            }
            "truncate" => {
                want(2)?;
                let text = s(0);
                let n = as_int(&args[1]).unwrap_or(0).max(0) as usize;
                string(text.chars().take(n).collect())
            }
            "len" => {
                want(1)?;
                let n = match &args[0] {
                    Some(Value::Array(a)) => a.len(),
                    Some(Value::Object(m)) => m.len(),
                    Some(Value::String(t)) => t.len(),
                    other => return err(format!(":1: len of {}", go_print(other))),
                };
                Ok(Some(Value::from(n)))
            }
            "index" => {
                if args.is_empty() {
                    return err(":1: wrong number of args for index: want at least 1 got 0");
                }
                let mut v = args[0].clone();
                for k in &args[1..] {
                    v = match (&v, k) {
                        (Some(Value::Array(a)), k) => match as_int(k) {
                            Some(i) if i >= 0 && (i as usize) < a.len() => Some(a[i as usize].clone()),
                            _ => return err(format!(":1: error calling index: index out of range: {}", go_print(k))),
                        },
                        (Some(Value::Object(m)), k) => Some(m.get(&go_print(k)).cloned().unwrap_or(Value::Null)),
                        (None | Some(Value::Null), _) => None,
                        (other, _) => return err(format!(":1: can't index item of type {}", go_type_val(other))),
                    };
                }
                Ok(v)
            }
            "print" | "println" => {
                let mut o = String::new();
                for (i, a) in args.iter().enumerate() {
                    // Go's Sprint adds spaces between operands when neither is a string;
                    // Sprintln always does.
                    let is_str = |x: &Val| matches!(x, Some(Value::String(_)));
                    if i > 0 && (name == "println" || !(is_str(a) || is_str(&args[i - 1]))) {
                        o.push(' ');
                    }
                    o.push_str(&go_print(a));
                }
                if name == "println" {
                    o.push('\n');
                }
                string(o)
            }
            "printf" => {
                if args.is_empty() {
                    return err(":1: wrong number of args for printf: want at least 1 got 0");
                }
                string(go_printf(&s(0), &args[1..]))
            }
            "not" => {
                want(1)?;
                Ok(Some(Value::Bool(!truthy(&args[0]))))
            }
            "and" => Ok(args.iter().find(|a| !truthy(a)).or(args.last()).cloned().flatten()),
            "or" => Ok(args.iter().find(|a| truthy(a)).or(args.last()).cloned().flatten()),
            "eq" => {
                if args.len() < 2 {
                    return err(":1: missing argument for comparison");
                }
                Ok(Some(Value::Bool(args[1..].iter().any(|b| values_equal(&args[0], b)))))
            }
            "ne" => {
                want(2)?;
                Ok(Some(Value::Bool(!values_equal(&args[0], &args[1]))))
            }
            "lt" | "le" | "gt" | "ge" => {
                want(2)?;
                let ord = compare(&args[0], &args[1]).ok_or_else(|| {
                    FormatError(format!(":1: error calling {name}: incompatible types for comparison"))
                })?;
                use std::cmp::Ordering::*;
                let r = match name {
                    "lt" => ord == Less,
                    "le" => ord != Greater,
                    "gt" => ord == Greater,
                    _ => ord != Less,
                };
                Ok(Some(Value::Bool(r)))
            }
            _ => err(format!(":1: function {name:?} not defined")),
        }
    }
}

fn as_int(v: &Val) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
}

fn values_equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (None, None) | (None, Some(Value::Null)) | (Some(Value::Null), None) => true,
        _ => a == b,
    }
}

fn compare(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Some(Value::String(x)), Some(Value::String(y))) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Go's truthiness: false, 0, nil, and empty strings, lists and maps are false.
fn truthy(v: &Val) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
    }
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "interface {}",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn go_type_val(v: &Val) -> &'static str {
    v.as_ref().map(go_type).unwrap_or("<nil>")
}

/// Go's `%v` of a JSON-decoded value.
/// The value of label `key` in `labels`: an object, or Docker's listing
/// form `k=v,k2=v2` (a piece without `=` belongs to the value before it, so
/// values may hold commas).
fn label_value(labels: Option<&Value>, key: &str) -> String {
    match labels {
        Some(Value::Object(m)) => m.get(key).map(|v| go_print(&Some(v.clone()))).unwrap_or_default(),
        Some(Value::String(text)) => {
            let mut pairs: Vec<(String, String)> = Vec::new();
            for piece in text.split(',') {
                match (piece.split_once('='), pairs.last_mut()) {
                    (Some((k, v)), _) => pairs.push((k.to_string(), v.to_string())),
                    (None, Some((_, v))) => {
                        v.push(',');
                        v.push_str(piece);
                    }
                    (None, None) => {}
                }
            }
            pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_default()
        }
        _ => String::new(),
    }
}

pub fn go_print(v: &Val) -> String {
    let mut s = String::new();
    go_print_into(v.as_ref(), &mut s, true);
    s
}

fn go_print_into(v: Option<&Value>, out: &mut String, top: bool) {
    match v {
        None if top => out.push_str("<no value>"),
        None | Some(Value::Null) => out.push_str("<nil>"),
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let _ = write!(out, "{}", n.as_f64().unwrap_or(0.0));
            }
        }
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(a)) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_print_into(Some(e), out, false);
            }
            out.push(']');
        }
        Some(Value::Object(m)) => {
            out.push_str("map[");
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                go_print_into(Some(e), out, false);
            }
            out.push(']');
        }
    }
}

/// A small `printf`: `%s %v %d %q %%` (others print their argument with `%v`).
fn go_printf(fmt: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => match it.next() {
                Some(a) => match verb {
                    'q' => out.push_str(&serde_json::to_string(&go_print(a)).unwrap_or_default()),
                    _ => out.push_str(&go_print(a)),
                },
                None => {
                    let _ = write!(out, "%!{verb}(MISSING)");
                }
            },
            None => out.push_str("%!(NOVERB)"),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Listing output: what a `--format` flag selects.

/// How a listing command prints its rows.
pub enum Output {
    /// Column-aligned table with a header row.
    Table(Template),
    /// One JSON object per row (`--format json`).
    Json,
    /// A custom template, rendered once per row.
    Raw(Template),
}

impl Output {
    /// Interprets `--format` as Docker does: none or `table` selects
    /// `default_table` (a `table ...` format), `json` one JSON object per
    /// line, `table ...` a custom table, anything else a per-row template.
    /// `\t` and `\n` written literally in the flag become tab and newline.
    pub fn new(format: Option<&str>, default_table: &str) -> Result<Output, FormatError> {
        let f = match format {
            None | Some("") | Some("table") => default_table,
            Some(f) => f,
        };
        if f == "json" {
            return Ok(Output::Json);
        }
        let (is_table, body) = match f.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, f),
        };
        let body = body.trim_matches(' ').replace("\\t", "\t").replace("\\n", "\n");
        let t = Template::parse(&body)?;
        Ok(if is_table { Output::Table(t) } else { Output::Raw(t) })
    }

    /// Renders `rows` (each a JSON object of the row's fields; `headers`
    /// maps field names to column titles) into the text to print.
    pub fn render(&self, rows: &[Value], headers: &[(&str, &str)]) -> Result<String, FormatError> {
        let mut buf = String::new();
        match self {
            Output::Json => {
                for r in rows {
                    buf.push_str(&serde_json::to_string(r).unwrap_or_default());
                    buf.push('\n');
                }
                Ok(buf)
            }
            Output::Raw(t) => {
                for r in rows {
                    buf.push_str(&t.render(r, true)?);
                    buf.push('\n');
                }
                Ok(buf)
            }
            Output::Table(t) => {
                buf.push_str(&t.render_header(headers)?);
                buf.push('\n');
                for r in rows {
                    buf.push_str(&t.render(r, true)?);
                    buf.push('\n');
                }
                Ok(tabwrite(&buf))
            }
        }
    }
}

/// Builds a row object from `(field, value)` pairs.
pub fn row<const N: usize>(fields: [(&str, String); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(k.to_string(), Value::String(v));
    }
    Value::Object(m)
}

/// Renders `data` with a template (inspect-style: missing keys are `<no value>`).
pub fn render_loose(template: &str, data: &Value) -> Result<String, FormatError> {
    let body = template.replace("\\t", "\t").replace("\\n", "\n");
    Template::parse(&body)?.render(data, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_label_method_reads_a_rows_labels() {
        let row = json!({"Names": "p1", "Labels": "env=prod,note=a,b,x=1"});
        let r = |t: &str| Template::parse(t).unwrap().render(&row, true).unwrap();
        assert_eq!(r(r#"{{.Label "env"}}"#), "prod");
        assert_eq!(r(r#"{{.Label "note"}}"#), "a,b");
        assert_eq!(r(r#"{{.Label "none"}}"#), "");
        assert_eq!(r(r#"{{"x" | .Label}}"#), "1");
        assert_eq!(r(r#"{{if eq (.Label "env") "prod"}}yes{{end}}"#), "yes");
        let row = json!({"Labels": {"a": "b"}});
        assert_eq!(Template::parse(r#"{{.Label "a"}}"#).unwrap().render(&row, true).unwrap(), "b");
    }

    #[test]
    fn human_sizes_match_go_units() {
        assert_eq!(human_size3(0), "0B");
        assert_eq!(human_size3(999), "999B");
        assert_eq!(human_size3(1000), "1kB");
        assert_eq!(human_size3(4270), "4.27kB");
        assert_eq!(human_size3(1_234_567), "1.23MB");
        assert_eq!(human_size3(4_261_550), "4.26MB");
        assert_eq!(human_size3(77_800_000), "77.8MB");
        assert_eq!(human_size3(999_900), "1e+03kB");
        assert_eq!(human_size3(1_500_000_000), "1.5GB");
        assert_eq!(human_size(4_261_550), "4.262MB");
        assert_eq!(human_size(2_746_000), "2.746MB");
        assert_eq!(human_size(796_000), "796kB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1_000_000_000_000_000_000), "1EB");
    }

    #[test]
    fn go_g_formatting() {
        assert_eq!(go_format_g(4.0, 3), "4");
        assert_eq!(go_format_g(0.5, 3), "0.5");
        assert_eq!(go_format_g(0.00001234, 3), "1.23e-05");
        assert_eq!(go_format_g(123.456, 4), "123.5");
        assert_eq!(go_format_g(100.0, 3), "100");
    }

    #[test]
    fn human_durations_match_go_units() {
        let d = |s: u64| human_duration(Duration::from_secs(s));
        assert_eq!(human_duration(Duration::from_millis(500)), "Less than a second");
        assert_eq!(d(1), "1 second");
        assert_eq!(d(45), "45 seconds");
        assert_eq!(d(60), "About a minute");
        assert_eq!(d(119), "About a minute");
        assert_eq!(d(120), "2 minutes");
        assert_eq!(d(59 * 60), "59 minutes");
        assert_eq!(d(3600), "About an hour");
        assert_eq!(d(5399), "About an hour");
        assert_eq!(d(5400), "2 hours");
        assert_eq!(d(47 * 3600), "47 hours");
        assert_eq!(d(48 * 3600), "2 days");
        assert_eq!(d(13 * 86400), "13 days");
        assert_eq!(d(14 * 86400), "2 weeks");
        assert_eq!(d(60 * 86400), "2 months");
        assert_eq!(d(3 * 365 * 86400), "3 years");
    }

    #[test]
    fn ellipsis_like_docker() {
        assert_eq!(ellipsis("abc", 45), "abc");
        let long = "/bin/sh -c #(nop) ADD file:abcdef0123456789abcdef0123456789 in / ";
        let e = ellipsis(long, 45);
        assert_eq!(e.chars().count(), 45);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn tabwriter_matches_docker_layout() {
        let text = "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\nbusybox\tlatest\tabcdef012345\t2 days ago\t4.26MB\n";
        let out = tabwrite(text);
        assert_eq!(
            out,
            "REPOSITORY   TAG       IMAGE ID       CREATED      SIZE\n\
             busybox      latest    abcdef012345   2 days ago   4.26MB\n"
        );
        // A line without tabs ends the column block.
        assert_eq!(tabwrite("a\tb\nplain\nlonger-cell\tc\n"), "a         b\nplain\nlonger-cell   c\n");
        // Shorter lines do not take part in later columns.
        assert_eq!(tabwrite("x\ty\tz\nx\n"), "x         y         z\nx\n");
    }

    #[test]
    fn fields_json_and_pipes() {
        let data = json!({"ID": "abc", "Tags": ["a", "b"], "Labels": {"k": "v", "a": "1"}, "Size": 42});
        let r = |t: &str| Template::parse(t).unwrap().render(&data, false).unwrap();
        assert_eq!(r("{{.ID}}"), "abc");
        assert_eq!(r("id={{ .ID }} size={{.Size}}"), "id=abc size=42");
        assert_eq!(r("{{json .Tags}}"), r#"["a","b"]"#);
        assert_eq!(r("{{.Tags | json}}"), r#"["a","b"]"#);
        assert_eq!(r("{{json .}}"), r#"{"ID":"abc","Labels":{"a":"1","k":"v"},"Size":42,"Tags":["a","b"]}"#);
        assert_eq!(r("{{.Tags}}"), "[a b]");
        assert_eq!(r("{{.Labels}}"), "map[a:1 k:v]");
        assert_eq!(r("{{.Missing}}"), "<no value>");
        assert_eq!(r("{{join .Tags \",\"}}"), "a,b");
        assert_eq!(r("{{index .Labels \"k\"}}"), "v");
        assert_eq!(r("{{.Labels.k}}"), "v");
        assert_eq!(r("{{upper .ID}}|{{.ID | upper | lower}}"), "ABC|abc");
        assert_eq!(r("{{truncate .ID 2}}"), "ab");
        assert_eq!(r("{{pad .ID 1 2}}|"), " abc  |");
        assert_eq!(r("{{len .Tags}}"), "2");
        assert_eq!(r("{{printf \"%s-%d\" .ID .Size}}"), "abc-42");
    }

    #[test]
    fn control_structures() {
        let data = json!({"Tags": ["a", "b"], "Empty": [], "Labels": {"x": "1", "y": "2"}, "Name": "n"});
        let r = |t: &str| Template::parse(t).unwrap().render(&data, false).unwrap();
        assert_eq!(r("{{range .Tags}}<{{.}}>{{end}}"), "<a><b>");
        assert_eq!(r("{{range .Empty}}x{{else}}none{{end}}"), "none");
        assert_eq!(r("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}"), "x=1;y=2;");
        assert_eq!(r("{{range $i, $t := .Tags}}{{$i}}{{$t}}{{$.Name}}{{end}}"), "0an1bn");
        assert_eq!(r("{{if .Empty}}yes{{else if .Tags}}tags{{else}}no{{end}}"), "tags");
        assert_eq!(r("{{if eq .Name \"n\"}}eq{{end}}"), "eq");
        assert_eq!(r("{{with .Labels}}{{.x}}{{end}}"), "1");
        assert_eq!(r("a  {{- .Name -}}  b"), "anb");
        assert_eq!(r("{{/* comment */}}c"), "c");
        assert_eq!(r("{{$n := .Name}}{{$n}}{{$n}}"), "nn");
        assert_eq!(r("{{if and .Tags (not .Empty)}}ok{{end}}"), "ok");
    }

    #[test]
    fn errors() {
        assert!(Template::parse("{{.A").is_err());
        assert!(Template::parse("{{if .A}}x").is_err());
        assert!(Template::parse("{{end}}").is_err());
        assert!(Template::parse("{{nosuch .A}}").unwrap().render(&json!({}), false).is_err());
        let e = Template::parse("{{.Foo}}").unwrap().render(&json!({"ID": "x"}), true).unwrap_err();
        assert!(e.to_string().contains("can't evaluate field Foo"), "{e}");
    }

    #[test]
    fn table_output_with_headers() {
        let out = Output::new(Some("table {{.Repository}}\\t{{.ID}}"), "table {{.ID}}").unwrap();
        let rows = vec![row([("Repository", "busybox".into()), ("ID", "0123456789ab".into())])];
        let text = out.render(&rows, &[("Repository", "REPOSITORY"), ("ID", "IMAGE ID")]).unwrap();
        assert_eq!(text, "REPOSITORY   IMAGE ID\nbusybox      0123456789ab\n");

        // Docker's default images format, including the if/else around CreatedSince.
        let def = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}";
        let out = Output::new(None, def).unwrap();
        let rows = vec![row([
            ("Repository", "<none>".into()),
            ("Tag", "<none>".into()),
            ("ID", "0123456789ab".into()),
            ("CreatedSince", "".into()),
            ("Size", "1kB".into()),
        ])];
        let headers = [
            ("Repository", "REPOSITORY"),
            ("Tag", "TAG"),
            ("ID", "IMAGE ID"),
            ("CreatedSince", "CREATED"),
            ("Size", "SIZE"),
        ];
        let text = out.render(&rows, &headers).unwrap();
        assert_eq!(text, "REPOSITORY   TAG       IMAGE ID       CREATED   SIZE\n<none>       <none>    0123456789ab   N/A       1kB\n");

        // Header functions pass titles through.
        let out = Output::new(Some("table {{.ID | lower}}"), def).unwrap();
        assert_eq!(out.render(&[], &headers).unwrap(), "IMAGE ID\n");
    }

    #[test]
    fn json_and_raw_output() {
        let rows =
            vec![row([("ID", "a".into()), ("Size", "1kB".into())]), row([("ID", "b".into()), ("Size", "2kB".into())])];
        let out = Output::new(Some("json"), "table {{.ID}}").unwrap();
        assert_eq!(
            out.render(&rows, &[]).unwrap(),
            "{\"ID\":\"a\",\"Size\":\"1kB\"}\n{\"ID\":\"b\",\"Size\":\"2kB\"}\n"
        );
        let out = Output::new(Some("{{.ID}}: {{.Size}}"), "table {{.ID}}").unwrap();
        assert_eq!(out.render(&rows, &[]).unwrap(), "a: 1kB\nb: 2kB\n");
        let out = Output::new(Some("{{json .}}"), "table {{.ID}}").unwrap();
        assert_eq!(out.render(&rows[..1], &[]).unwrap(), "{\"ID\":\"a\",\"Size\":\"1kB\"}\n");
    }
}

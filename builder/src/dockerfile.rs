//! Reading a Dockerfile into instructions: parser directives (`# escape=`),
//! comments, line continuations, the keyword, `--flag=value` options and
//! the arguments as written (exec-form JSON is recognised where it is
//! allowed). What the instructions mean is [`crate::build`]'s business.
//!
//! The rules are BuildKit's: a comment is a line whose first non-blank
//! character is `#`, also inside a continued instruction; a line ending in
//! the escape character (`\`, or `` ` `` with `# escape=``) continues on the
//! next; blank lines inside a continuation are skipped. A RUN, COPY or
//! ADD naming here-documents (`<<EOF`, `<<-EOF`, quoted or not) takes the
//! lines after it, each document up to its word, as they are (comments and
//! blank lines included).

use std::fmt;

/// Every instruction keyword a Dockerfile may use.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions whose leading `--name=value` words are options.
const TAKES_FLAGS: &[&str] = &["ADD", "COPY", "FROM", "RUN", "HEALTHCHECK"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile parse error on line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line it starts on (1-based).
    pub line: usize,
    /// Upper case: `RUN`, `COPY`, ...
    pub keyword: String,
    /// `--name=value` options in order (`--name` alone has an empty value).
    pub flags: Vec<(String, String)>,
    /// The arguments after the options, continuations joined, trimmed.
    pub args: String,
    /// Here-documents the arguments name (`<<EOF`), in order, with their text.
    pub heredocs: Vec<Heredoc>,
}

/// A here-document of a RUN, COPY or ADD (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The word that ends it (`EOF`), quotes removed.
    pub name: String,
    /// How it was written in the arguments (`<<-'EOF'`).
    pub word: String,
    /// Its lines, each ending in a newline (leading tabs removed for `<<-`).
    pub body: String,
}

impl Instruction {
    /// The exec form (`["a", "b"]`), when the arguments are one.
    pub fn json_args(&self) -> Option<Vec<String>> {
        let a = self.args.trim();
        if !a.starts_with('[') {
            return None;
        }
        serde_json::from_str(a).ok()
    }

    /// The value of option `--name`, if given (the last one wins).
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Instruction {
    /// The instruction as a build step prints it: `RUN --mount=x echo hi`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.keyword)?;
        for (n, v) in &self.flags {
            if v.is_empty() {
                write!(f, " --{n}")?;
            } else {
                write!(f, " --{n}={v}")?;
            }
        }
        if !self.args.is_empty() {
            write!(f, " {}", self.args)?;
        }
        Ok(())
    }
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: only at the very top, before any blank line,
    // comment of another kind or instruction.
    while i < lines.len() {
        let Some(d) = directive(lines[i]) else { break };
        if d.0 == "escape" {
            escape = match d.1.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(ParseError {
                        line: i + 1,
                        message: format!("invalid escape token {other:?}: use \\ or `"),
                    })
                }
            };
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let mut text = String::new();
        let mut line = first.to_string();
        loop {
            let continued = line.trim_end().ends_with(escape);
            if continued {
                let t = line.trim_end();
                text.push_str(&t[..t.len() - escape.len_utf8()]);
            } else {
                text.push_str(&line);
                break;
            }
            // The next line that is neither blank nor a comment continues it.
            let mut next = None;
            while i < lines.len() {
                let l = lines[i];
                i += 1;
                let t = l.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                next = Some(l.to_string());
                break;
            }
            match next {
                Some(l) => line = l,
                None => break,
            }
        }
        let mut ins = instruction(start + 1, text.trim())?;
        // Here-documents: the lines after the instruction, each up to its word.
        for (word, name, strip_tabs) in heredoc_words(&ins) {
            let mut body = String::new();
            loop {
                let Some(l) = lines.get(i) else {
                    return Err(ParseError {
                        line: start + 1,
                        message: format!("here-document {word} is not ended by a line {name}"),
                    });
                };
                i += 1;
                let l = if strip_tabs { l.trim_start_matches('\t') } else { l };
                if l == name {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            ins.heredocs.push(Heredoc { name, word, body });
        }
        out.push(ins);
    }
    Ok(out)
}

/// `# name=value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((name, value.trim().to_string()))
}

fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let err = |message: String| ParseError { line, message };
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(err(format!("unknown instruction: {word}")));
    }
    let mut rest = rest.trim_start();
    let mut flags = Vec::new();
    if TAKES_FLAGS.contains(&keyword.as_str()) {
        while let Some(f) = rest.strip_prefix("--") {
            let (flag, after) = f.split_once(char::is_whitespace).unwrap_or((f, ""));
            let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
            if name.is_empty() {
                return Err(err(format!("{keyword}: empty option name")));
            }
            flags.push((name.to_string(), value.to_string()));
            rest = after.trim_start();
        }
    }
    if rest.is_empty() && !matches!(keyword.as_str(), "RUN" | "CMD" | "ENTRYPOINT") {
        return Err(err(format!("{keyword} requires at least one argument")));
    }
    Ok(Instruction { line, keyword, flags, args: rest.to_string(), heredocs: Vec::new() })
}

/// The here-document words (`<<WORD`, `<<-WORD`, optionally quoted) of a
/// shell-form RUN, COPY or ADD: (as written, the ending word, tabs stripped).
fn heredoc_words(ins: &Instruction) -> Vec<(String, String, bool)> {
    if !matches!(ins.keyword.as_str(), "RUN" | "COPY" | "ADD") || ins.args.trim_start().starts_with('[') {
        return Vec::new();
    }
    ins.args
        .split_whitespace()
        .filter_map(|w| {
            let rest = w.strip_prefix("<<")?;
            let (strip, rest) = match rest.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let name = rest.trim_matches(|c| c == '"' || c == '\'');
            let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            plain.then(|| (w.to_string(), name.to_string(), strip))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_comments_and_continuations() {
        let text = "# syntax=docker/dockerfile:1\n\
                    FROM busybox AS base\n\
                    \n\
                    # a comment\n\
                    RUN echo a \\\n  # inside\n\n  && echo b\n\
                    copy --chown=1:2 --from=base a b /dst/\n\
                    CMD [\"sh\", \"-c\", \"echo hi\"]\n";
        let ins = parse(text).unwrap();
        assert_eq!(ins.len(), 4);
        assert_eq!((ins[0].line, ins[0].keyword.as_str(), ins[0].args.as_str()), (2, "FROM", "busybox AS base"));
        assert_eq!((ins[1].line, ins[1].args.as_str()), (5, "echo a   && echo b"));
        assert_eq!(ins[2].keyword, "COPY");
        assert_eq!(ins[2].flag("chown"), Some("1:2"));
        assert_eq!(ins[2].flag("from"), Some("base"));
        assert_eq!(ins[2].args, "a b /dst/");
        assert_eq!(ins[2].to_string(), "COPY --chown=1:2 --from=base a b /dst/");
        assert_eq!(ins[3].json_args(), Some(vec!["sh".into(), "-c".into(), "echo hi".into()]));
    }

    #[test]
    fn here_documents() {
        let text = "FROM x\nRUN <<EOF\n# not a comment here\n\necho $A\nEOF\nCOPY <<-'one' <<two /dst/\n\tfirst\n\tone\nsecond\ntwo\nCMD x\n";
        let ins = parse(text).unwrap();
        assert_eq!(ins.len(), 4);
        assert_eq!(
            ins[1].heredocs,
            [Heredoc { name: "EOF".into(), word: "<<EOF".into(), body: "# not a comment here\n\necho $A\n".into() }]
        );
        assert_eq!(ins[2].heredocs[0].body, "first\n");
        assert_eq!(ins[2].heredocs[0].word, "<<-'one'");
        assert_eq!(ins[2].heredocs[1].body, "second\n");
        assert_eq!((ins[3].keyword.as_str(), ins[3].line), ("CMD", 12));
    }

    #[test]
    fn escape_directive() {
        let ins = parse("# escape=`\nFROM x\nRUN dir `\n  c:\\\n").unwrap();
        assert_eq!(ins[1].args, "dir   c:\\");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("FROM x\nFOO bar\n"), Err(ParseError { line: 2, message: "unknown instruction: FOO".into() }));
        assert!(parse("FROM x\nCOPY\n").unwrap_err().message.contains("requires at least one argument"));
        assert!(parse("FROM x\nRUN <<EOF\necho\n").unwrap_err().message.contains("is not ended by a line EOF"));
        assert!(parse("RUN echo 'a<<b'").unwrap()[0].heredocs.is_empty());
    }
}
